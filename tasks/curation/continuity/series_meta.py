"""Series metadata from (de-identified) DICOM headers: sequence type, plane, body part.

Rules are documented in ``docs/conversion.md`` ("Series metadata"). They use
descriptive text (SeriesDescription, ProtocolName) first, because vendors name
protocols consistently, then the physics (ScanningSequence, SequenceVariant,
ScanOptions, TR/TE/TI) as a fallback. Nothing here logs or raises header values, and nothing
here rejects: a value that cannot be read as its type (text in TR, a number in a description,
a value pydicom cannot decode) counts as unknown (None), as NaN/inf do.
"""
from __future__ import annotations

import math
import re

import numpy as np
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from mrifoundry.tasks.curation.dicom_values import value_or_none

SEQUENCE_TYPES = ("T1", "T2", "PD", "STIR", "FLAIR", "DWI", "DTI", "ADC", "DIXON", "DCE", "SWI", "BOLD", "GRE",
                  "OTHER")
# A plane is named when the slice normal is within this angle of a patient axis.
PLANE_TOLERANCE_DEG = 10.0

_A = r"(?<![A-Z0-9])"  # token start: not preceded by a letter/digit
# (sequence type, pattern on upper-cased "SeriesDescription ProtocolName"), first match wins.
# Order matters: maps and special contrasts before the generic weightings (a "T2 FLAIR"
# is FLAIR, a "T1 DIXON" is DIXON, "DWI ADC" is ADC).
_DTI_RULE = _A + r"(DTI|DT(?=[-_ ])|DSI|HARDI|NODDI|TENSOR|\d{1,3}[-_ ]?DIR(S|ECTIONS?)?(?![A-Z])|\d{2,3}D(?![A-Z0-9]))"
_TEXT_RULES: tuple[tuple[str, str], ...] = (
    ("ADC", _A + r"(E?ADC|APPARENT DIFF)"),
    # tensor / multi-direction diffusion before plain DWI: "DTI_64D", Philips "DT_HIGH_32DIR"
    ("DTI", _DTI_RULE),
    ("DWI", _A + r"(DWI|D?MRI_?DIFF|DMRI|DIFF|DIFFUSION|TRACEW?|EP2D_DIFF|RESOLVE|B\d{3,4}(?![0-9]))"),
    ("BOLD", _A + r"(BOLD|FMRI|RS[-_ ]?FMRI|RESTING|REST(?![A-Z])|TASK[-_ ]|EP2D_BOLD|FUNCTIONAL)"),
    ("SWI", _A + r"(SWI|SWAN|SWIP|SUSCEPT|VENBOLD)"),
    ("DIXON", _A + r"(DIXON|M?DIXON|IDEAL|FLEX|IN[-_ ]?PHASE|OUT[-_ ]?(OF[-_ ]?)?PHASE|OPP[-_ ]?PHASE|WATER|FAT ONLY)"),
    ("DCE", _A + r"(DCE|DYN|DYNAMIC|PERFUSION|TWIST|DISCO|TRICKS)"),
    ("FLAIR", _A + r"(FLAIR|DARK[-_ ]?FLUID)"),
    ("STIR", _A + r"(STIR|TIRM|SPAIR STIR)"),
    ("GRE", _A + r"(T2\*|T2STAR|T2 STAR|MEDIC|MERGE|HEMO|FFE T2)"),
    ("PD", _A + r"(PD|PDW|PROTON DENSITY|DP)(?![A-Z0-9])|" + _A + r"PD(FS|W|SPAIR|_)"),
    ("T2", _A + r"T2(?![0-9])"),
    ("T1", _A + r"(T1(?![0-9])|MPRAGE|MP-RAGE|SPGR|BRAVO|TFE|VIBE|LAVA|THRIVE|FSPGR)"),
)
_IMAGE_TYPE_RULES: tuple[tuple[str, frozenset[str]], ...] = (
    ("ADC", frozenset({"ADC", "EADC"})),
    ("BOLD", frozenset({"FMRI"})),
    ("DWI", frozenset({"DIFFUSION", "TRACEW", "TRACE"})),
    ("SWI", frozenset({"SWI", "SWAN"})),
    ("DIXON", frozenset({"DIXON", "WATER", "FAT", "IN_PHASE", "OUT_PHASE", "OPP_PHASE"})),
)
#: Header text → body-part label. Labels are the shipped report rules' vocabulary
#: (tasks/curation/selection/duke110k_rules.yaml: lower snake_case), plus finer header-only ones (spine,
#: foot, hand, thigh, leg, arm), so exams.body_part and series.body_part compare as equals.
_BODY_PARTS: tuple[tuple[str, str], ...] = (
    ("cervical_spine", r"C[-_ ]?SPINE|CERVICAL"), ("thoracic_spine", r"T[-_ ]?SPINE|THORACIC SPINE"),
    ("lumbar_spine", r"L[-_ ]?SPINE|LUMBAR|LUMBOSACRAL"), ("spine", r"SPINE"),
    ("knee", r"KNEE"), ("shoulder", r"SHOULDER"), ("hip", r"HIPS?"), ("ankle", r"ANKLE"),
    ("foot", r"FOOT|FOREFOOT|TOE"), ("wrist", r"WRIST"), ("hand", r"HAND|FINGER|THUMB"),
    ("elbow", r"ELBOW"), ("breast", r"BREASTS?"), ("prostate", r"PROSTATE"),
    ("pelvis", r"PELVIS|PELVIC"), ("liver", r"LIVER"), ("abdomen", r"ABD(OMEN)?|MRCP|PANCREAS|KIDNEYS?|RENAL"),
    ("cardiac", r"HEART|CARDIAC"), ("chest", r"CHEST|THORAX"), ("brain", r"BRAIN|HEAD"),
    ("neck", r"NECK"), ("thigh", r"THIGH|FEMUR"), ("leg", r"LEG|TIBIA|CALF"),
    ("arm", r"HUMERUS|FOREARM|ARM"),
)
# a letter or digit after the word is another token: "GD0" in a GE EPI name is no gadolinium
_CONTRAST = re.compile(_A + r"(POST|GAD|GD|C\+|\+C|CE|CONTRAST|DOTAREM|GADAVIST|MULTIHANCE)(?![A-Z0-9])")
_NO_CONTRAST = re.compile(r"\b(PRE|WITHOUT|NON[-_ ]?CONTRAST|W/?O)\b")


def _text(ds: Dataset, *keywords: str) -> str:
    return " ".join(str(value_or_none(ds, k) or "") for k in keywords).upper()


def _str(ds: Dataset, keyword: str) -> str | None:
    """A text value (VM 1) as str; None when absent, blank or not text."""
    value = value_or_none(ds, keyword)
    return str(value) if isinstance(value, str) and value.strip() else None


def _float(ds: Dataset, keyword: str) -> float | None:
    value = value_or_none(ds, keyword)
    if value is None or isinstance(value, (str, bytes)) and not value.strip():
        return None
    if isinstance(value, (bytes, bytearray)):
        return None
    if isinstance(value, (list, tuple, MultiValue)):
        value = value[0] if len(value) else None
    try:
        number = float(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return number if math.isfinite(number) else None  # NaN/inf in a header means "unknown"


def _int(ds: Dataset, keyword: str) -> int | None:
    value = _float(ds, keyword)
    return int(value) if value is not None and abs(value) < 2 ** 63 else None   # the catalog's int64


def _multi(ds: Dataset, keyword: str) -> set[str]:
    value = value_or_none(ds, keyword)
    if value is None:
        return set()
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    return {str(v).strip().upper() for v in values if isinstance(v, str)}   # a number is no code string


def sequence_type(ds: Dataset, n_timepoints: int = 1) -> str:
    """Classify a series into one of :data:`SEQUENCE_TYPES`.

    Args:
        ds: any image header of the series.
        n_timepoints: temporal positions found by the continuity check; a contrast-enhanced
            series with several is DCE even when its name does not say so.

    Returns:
        The sequence type code ("OTHER" when no rule applies).
    """
    image_type = _multi(ds, "ImageType")
    text = _text(ds, "SeriesDescription", "ProtocolName")
    if re.search(_DTI_RULE, text):   # a tensor protocol's images say DIFFUSION too
        return "DTI"
    for label, tokens in _IMAGE_TYPE_RULES:
        if image_type & tokens:
            return label
    for label, pattern in _TEXT_RULES:
        if re.search(pattern, text):
            if label in ("T1", "GRE") and n_timepoints > 1 and is_contrast(ds):
                return "DCE"
            return label
    if n_timepoints > 1 and is_contrast(ds):
        return "DCE"
    b_value = _float(ds, "DiffusionBValue")
    if b_value is not None and b_value > 0:
        return "DWI"
    return _physics_type(ds)


def _physics_type(ds: Dataset) -> str:
    """Fallback from acquisition physics (textbook TR/TE/TI ranges at 1.5–3 T)."""
    seq = _multi(ds, "ScanningSequence")
    variant = _multi(ds, "SequenceVariant") | _multi(ds, "ScanOptions")
    tr, te, ti = _float(ds, "RepetitionTime"), _float(ds, "EchoTime"), _float(ds, "InversionTime")
    if "IR" in seq or "IR" in variant:
        if ti is not None and ti >= 1500 and (te or 0) >= 70:
            return "FLAIR"
        if ti is not None and 100 <= ti <= 250:
            return "STIR"
        if ti is not None:
            return "T1"  # MPRAGE-like inversion-prepared T1
    if "EP" in seq and 20 <= (te or 0) < 50 and (tr or 0) >= 500:
        return "BOLD"   # T2*-weighted EPI (fMRI): TE ≈ 30 ms at 3 T, ≈ 45 ms at 1.5 T
    if "EP" in seq and (te or 0) >= 50:
        return "DWI"
    if tr is None or te is None:
        return "GRE" if "GR" in seq else "OTHER"
    if "GR" in seq and "SE" not in seq:
        if te >= 15 and tr >= 200:
            return "GRE"  # T2*-weighted gradient echo
        return "T1" if tr < 50 or te < 5 else "GRE"
    if tr < 800 and te < 30:
        return "T1"
    if tr >= 2000 and te >= 70:
        return "T2"
    if tr >= 1500 and te < 40:
        return "PD"
    return "OTHER"


def is_contrast(ds: Dataset) -> bool:
    """True when ContrastBolusAgent is set or the series text says post-contrast."""
    if str(value_or_none(ds, "ContrastBolusAgent") or "").strip():
        return True
    text = _text(ds, "SeriesDescription", "ProtocolName")
    return bool(_CONTRAST.search(text)) and not _NO_CONTRAST.search(text)


def orientation(iop) -> str | None:
    """Plane of an ImageOrientationPatient: axial|coronal|sagittal, else oblique.

    The slice normal (row × column direction) within ``PLANE_TOLERANCE_DEG`` of the
    x (L-R) axis is sagittal, of y (A-P) coronal, of z (S-I) axial.
    """
    try:
        v = np.asarray([float(x) for x in iop], dtype=float)
    except (TypeError, ValueError, OverflowError):  # absent, single-valued or not numeric
        return None
    if v.shape != (6,):
        return None
    normal = np.cross(v[:3], v[3:])
    norm = np.linalg.norm(normal)
    if not np.isfinite(norm) or norm < 1e-6:
        return None
    normal = np.abs(normal / norm)
    axis = int(np.argmax(normal))
    if normal[axis] < math.cos(math.radians(PLANE_TOLERANCE_DEG)):
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def body_part(ds: Dataset) -> str | None:
    """BodyPartExamined when set, else the first keyword found in Study/Series/Protocol text.

    A label of ``_BODY_PARTS``; an unmapped BodyPartExamined comes back lower-cased, its
    runs of other characters as one ``_`` (``"TMJ"`` → ``"tmj"``).
    """
    for keyword in ("BodyPartExamined", "StudyDescription", "SeriesDescription", "ProtocolName"):
        text = _text(ds, keyword).replace("_", " ")
        for label, pattern in _BODY_PARTS:
            if re.search(r"(?<![A-Z])(" + pattern + r")(?![A-Z])", text):
                return label
        if keyword == "BodyPartExamined" and text.strip():
            return re.sub(r"[^A-Z0-9]+", "_", text).strip("_").lower() or None
    return None


def _pair(value) -> tuple[float | None, float | None]:
    """Two finite floats of a 2-valued DS (PixelSpacing), else (None, None)."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError, OverflowError):
        return None, None
    return (a, b) if math.isfinite(a) and math.isfinite(b) else (None, None)


def derive_meta(ds: Dataset, *, n_slices: int | None = None, n_timepoints: int | None = None,
                slice_spacing: float | None = None) -> dict:
    """The ``meta`` dict of a :class:`tasks.curation.continuity.checks.SeriesCheck` (keys in docs/contracts.md).

    Args:
        ds: a representative image header of the series (after de-identification).
        n_slices, n_timepoints, slice_spacing: what the continuity check measured.

    Returns:
        A dict with every contract key; None where unknown.
    """
    spacing = _pair(value_or_none(ds, "PixelSpacing"))
    iop = value_or_none(ds, "ImageOrientationPatient")
    tsyntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    description = value_or_none(ds, "SeriesDescription")
    return {
        "modality": _str(ds, "Modality"),
        "sequence_type": sequence_type(ds, n_timepoints or 1),
        "orientation": orientation(iop),
        "body_part": body_part(ds),
        "series_description": str(description) if description is not None else None,
        "manufacturer": _str(ds, "Manufacturer"),
        "model": _str(ds, "ManufacturerModelName"),
        "field_strength": _float(ds, "MagneticFieldStrength"),
        "rows": _int(ds, "Rows"),
        "cols": _int(ds, "Columns"),
        "pixel_spacing_row": spacing[0],
        "pixel_spacing_col": spacing[1],
        "slice_thickness": _float(ds, "SliceThickness"),
        "slice_spacing": slice_spacing,
        "n_slices": n_slices,
        "n_timepoints": n_timepoints,
        "repetition_time": _float(ds, "RepetitionTime"),
        "echo_time": _float(ds, "EchoTime"),
        "flip_angle": _float(ds, "FlipAngle"),
        "transfer_syntax": str(tsyntax) if tsyntax else None,
        "contrast": is_contrast(ds),
    }
