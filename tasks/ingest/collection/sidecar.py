"""What of a BIDS sidecar and a file name reaches the catalog: an allowlist, then Clean Descriptors.

A sidecar (dcm2niix or scanner export) may hold PatientName, AcquisitionDateTime, InstitutionName,
DeviceSerialNumber, UIDs … Only the acquisition fields below are read; free text (SeriesDescription,
ProtocolName) goes through the DICOM path's Clean Descriptors with the sidecar's own identifying
values as PHI terms. Sidecar keys are DICOM keywords, so the DICOM rules classify the series
(tasks/curation/continuity/series_meta.py) on a pydicom Dataset built from them.
"""
from __future__ import annotations

import json
import math
import re

import numpy as np
from pydicom.dataset import Dataset

from mrifoundry.tasks.curation.audit.identifiers import sidecar_identifiers
from mrifoundry.tasks.curation.continuity.series_meta import body_part, is_contrast, orientation, sequence_type
from mrifoundry.tasks.curation.deid.profile import clean_text

__all__ = ["SUFFIX_SEQUENCE", "bids_entities_json", "series_metadata"]

#: BIDS suffix → sequence_type (the series table's vocabulary); other suffixes use the DICOM rules
SUFFIX_SEQUENCE = {"T1w": "T1", "T2w": "T2", "PDw": "PD", "FLAIR": "FLAIR", "T2starw": "GRE", "T2star": "GRE",
                   "PDT2": "PD", "inplaneT1": "T1", "inplaneT2": "T2", "angio": "OTHER", "dwi": "DWI",
                   "bold": "BOLD", "cbv": "BOLD", "swi": "SWI", "MTw": "OTHER", "UNIT1": "T1", "T1map": "T1",
                   "T2map": "T2", "MP2RAGE": "T1", "MEGRE": "GRE", "MESE": "T2"}
_SECONDS = ("RepetitionTime", "EchoTime", "InversionTime")   # BIDS seconds, DICOM milliseconds
_TEXT = ("SeriesDescription", "ProtocolName", "BodyPartExamined", "ContrastBolusAgent", "ContrastBolusIngredient")
_CODES = ("ScanningSequence", "SequenceVariant", "ScanOptions", "ImageType", "MRAcquisitionType")
_SAFE_ENTITY = re.compile(r"^[A-Za-z0-9+]{1,32}$")


def _num(v) -> float | None:
    try:
        f = float(v[0] if isinstance(v, list) and v else v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _phi(sidecar: dict, extra: list[str]) -> re.Pattern | None:
    terms = {t for t in extra if t}
    for value, kind in sidecar_identifiers(sidecar):
        terms.add(value)
        # name components are PHI one by one, as in the DICOM path (deid/profile.phi_pattern)
        terms.update(t.strip() for t in re.split(r"[\^=\s,]+" if kind in ("name", "physician") else r"\^+", value))
    terms = {t for t in terms if len(t) >= 2 and any(c.isalnum() for c in t) and not (t.isdigit() and len(t) < 3)}
    if not terms:
        return None
    alt = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<![A-Za-z0-9])(?:{alt})(?![A-Za-z0-9])", re.IGNORECASE)


def as_dataset(sidecar: dict, phi: re.Pattern | None) -> Dataset:
    """The allowlisted sidecar fields as a DICOM header (times in ms, text cleaned)."""
    ds = Dataset()
    for key in _SECONDS:
        v = _num(sidecar.get(key))
        if v is not None:
            setattr(ds, key, v * 1000.0 if v < 60 else v)   # seconds per BIDS; a value ≥ 60 was written in ms
    for key in ("FlipAngle", "MagneticFieldStrength", "SliceThickness"):
        v = _num(sidecar.get(key))
        if v is not None:
            setattr(ds, key, v)
    for key in _TEXT:
        v = sidecar.get(key)
        if isinstance(v, str) and v.strip():
            setattr(ds, key, clean_text(v.strip(), phi)[:64])
    for key in _CODES:
        v = sidecar.get(key)
        vals = v if isinstance(v, list) else str(v or "").replace("\\", "_").split("_") if v else []
        vals = [str(x) for x in vals if re.fullmatch(r"[A-Z0-9_ ]{1,16}", str(x))]
        if vals:
            setattr(ds, key, vals)
    for key, attr in (("Manufacturer", "Manufacturer"), ("ManufacturersModelName", "ManufacturerModelName")):
        v = sidecar.get(key)
        if isinstance(v, str) and v.strip():
            setattr(ds, attr, clean_text(v.strip(), phi)[:64])
    return ds


def _iop(affine: np.ndarray) -> list[float]:
    """ImageOrientationPatient (LPS) of the source grid's first two voxel axes."""
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :3]
    cols = [lps[:, i] / (np.linalg.norm(lps[:, i]) or 1.0) for i in (0, 1)]
    return [float(x) for x in np.concatenate(cols)]


def series_metadata(sidecar: dict, entities: dict[str, str], affine: np.ndarray, n_timepoints: int,
                    extra_phi: list[str] = ()) -> dict:
    """The ``series`` columns a NIfTI collection can fill from its sidecar, BIDS name and affine."""
    ds = as_dataset(sidecar, _phi(sidecar, list(extra_phi)))
    suffix = entities.get("suffix")
    seq = SUFFIX_SEQUENCE.get(suffix) if suffix else None
    if seq in (None, "OTHER"):
        seq = sequence_type(ds, n_timepoints) if len(ds) else "OTHER"
    contrast = bool(entities.get("ce")) or is_contrast(ds)
    return {"series_description": ds.get("SeriesDescription") or ds.get("ProtocolName") or suffix,
            "sequence_type": seq, "orientation": orientation(_iop(affine)), "body_part": body_part(ds),
            "contrast": contrast, "manufacturer": ds.get("Manufacturer"), "model": ds.get("ManufacturerModelName"),
            "field_strength": _num(ds.get("MagneticFieldStrength")),
            "repetition_time": _num(ds.get("RepetitionTime")), "echo_time": _num(ds.get("EchoTime")),
            "flip_angle": _num(ds.get("FlipAngle")), "slice_thickness": _num(ds.get("SliceThickness"))}


def bids_entities_json(entities: dict[str, str]) -> str | None:
    """Entities other than sub/ses, values restricted to the BIDS label alphabet (no free text)."""
    keep = {k: v for k, v in entities.items() if k not in ("sub", "ses") and _SAFE_ENTITY.match(str(v))}
    return json.dumps(keep, sort_keys=True) if keep else None
