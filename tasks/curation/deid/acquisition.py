"""Vendor acquisition values made public before de-identification removes private tags.

Diffusion b-values and gradient directions, ASL label/control and phase encoding sit in
private elements that differ by vendor (Siemens CSA header, GE and Philips private groups).
De-identification drops private elements, so :func:`standardize` copies them into their
public DICOM attributes on each classic image first (as an enhanced object's functional
groups would hold them), and :func:`describe` keeps the series-level values (phase-encoding
axis and polarity, multiband factor, slice times) for the stage artifact. Every value here is
a number or a coded string: nothing identifies anybody. Sources and frames:
``docs/vendors.md`` (what dcm2niix reads, and where we differ).

- b-value: ``DiffusionBValue`` (0018,9087); Siemens CSA ``B_value``; GE (0043,1039)[0] (values
  above 1e9 carry a flag in the high digits); Philips (2001,1003).
- gradient: ``DiffusionGradientOrientation`` (0018,9089) in patient LPS; Siemens CSA
  ``DiffusionGradientDirection`` (LPS); Philips (2005,10B0/B1/B2) (LPS); GE (0019,10BB/BC/BD)
  in the logical frequency/phase/slice frame, turned into LPS with the image axes.
- ASL: Philips (2005,1429) LABEL/CONTROL → ``ASLContext`` (0018,9257).
- phase encoding: ``InPlanePhaseEncodingDirection`` (ROW/COL); polarity from Siemens CSA
  ``PhaseEncodingDirectionPositive`` or ``RectilinearPhaseEncodeReordering`` (0018,9034, GE).
"""
from __future__ import annotations

import math
import re
import struct
import warnings

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

__all__ = ["asl_context", "describe", "ge_pepolar_alternating", "ge_pepolar_reversed", "gradient_lps",
           "pe_world_vector", "standardize"]

_GE_B, _GE_GRADIENT = (0x0043, 0x1039), ((0x0019, 0x10BB), (0x0019, 0x10BC), (0x0019, 0x10BD))
_PHILIPS_B, _PHILIPS_GRADIENT = (0x2001, 0x1003), ((0x2005, 0x10B0), (0x2005, 0x10B1), (0x2005, 0x10B2))
_PHILIPS_LABEL = (0x2005, 0x1429)
_GE_MULTIBAND = (0x0043, 0x10B6)


def _csa(ds: Dataset, which: str = "image") -> dict | None:
    with warnings.catch_warnings():   # nibabel.nicom warns on import that its readers are experimental
        warnings.simplefilter("ignore", UserWarning)
        import nibabel.nicom.csareader as csareader
    try:
        return csareader.get_csa_header(ds, which) or None
    except Exception:  # noqa: BLE001 - a broken CSA header only means the value is unknown
        return None


def _csa_items(csa: dict | None, name: str) -> list:
    if not csa:
        return []
    return list((csa.get("tags", {}).get(name) or {}).get("items") or [])


def _elem(ds: Dataset, tag):
    """The data element of a keyword or (group, element) tag, or None."""
    try:
        return ds[tag] if tag in ds else None
    except (KeyError, ValueError, TypeError):
        return None


def _numbers(ds: Dataset, tag, fmt: str = "<f") -> list[float]:
    """The element's values as floats ([] when absent or unreadable); private FL/FD/IS/DS read
    without a dictionary come as bytes (little-endian ``fmt``) or text."""
    elem = _elem(ds, tag)
    if elem is None:
        return []
    value = elem.value
    try:
        if isinstance(value, bytes):
            size = struct.calcsize(fmt)
            if elem.VR in ("FL", "FD", "UN", "OB") and len(value) % size == 0 and not value[:1].isdigit():
                values = [v[0] for v in struct.iter_unpack(fmt, value)]
            else:
                values = [float(v) for v in value.decode("latin-1").strip("\0 ").split("\\") if v.strip()]
        elif isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
            values = [float(v) for v in value]
        else:
            values = [float(value)]
    except (TypeError, ValueError, struct.error, UnicodeDecodeError):
        return []
    return [v for v in values if math.isfinite(v)]


def _text(ds: Dataset, tag) -> str:
    elem = _elem(ds, tag)
    if elem is None:
        return ""
    value = elem.value
    if isinstance(value, bytes):
        value = value.decode("latin-1", "replace")
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        value = value[0] if value else ""
    return str(value).strip("\0 ").upper()


def _vendor(ds: Dataset) -> str:
    m = str(ds.get("Manufacturer", "") or "").upper()
    for key, name in (("SIEMENS", "siemens"), ("GE ", "ge"), ("GE_", "ge"), ("PHILIPS", "philips"),
                      ("TOSHIBA", "canon"), ("CANON", "canon"), ("HITACHI", "hitachi"), ("FUJI", "hitachi")):
        if key in m + " ":
            return name
    return "other"


def _iop(ds: Dataset) -> np.ndarray | None:
    try:
        iop = np.array([float(v) for v in ds.ImageOrientationPatient], dtype=float)
    except (AttributeError, TypeError, ValueError):
        return None
    return iop if iop.shape == (6,) and np.all(np.isfinite(iop)) else None


def gradient_lps(ds: Dataset) -> tuple[float | None, list[float] | None]:
    """(b-value, unit gradient direction in patient LPS) of one image, from public or vendor
    attributes; (None, None) when the image carries no diffusion values."""
    b = _numbers(ds, (0x0018, 0x9087), "<d")
    seq = ds.get("DiffusionGradientDirectionSequence")
    g = list(seq[0].get("DiffusionGradientOrientation") or []) if seq else []
    vendor = _vendor(ds)
    if vendor == "siemens" and (not b or not g):
        csa = _csa(ds)
        b = b or [float(v) for v in _csa_items(csa, "B_value")[:1]]
        g = g or [float(v) for v in _csa_items(csa, "DiffusionGradientDirection")[:3]]
    elif vendor == "philips":
        b = b or _numbers(ds, _PHILIPS_B)
        g = g or [v for tag in _PHILIPS_GRADIENT for v in _numbers(ds, tag)[:1]]
    elif vendor == "ge":
        if not b:
            raw = _numbers(ds, _GE_B)
            b = [raw[0] % 1e9] if raw else []   # DV24+: 1e9 × a flag is added to the b-value
        if not g:
            logical = [v for tag in _GE_GRADIENT for v in _numbers(ds, tag)[:1]]
            g = _ge_logical_to_lps(ds, logical) if len(logical) == 3 else []
    bval = float(b[0]) if b else None
    if len(g) != 3 or not all(math.isfinite(float(v)) for v in g):
        return bval, None
    vec = np.array(g, dtype=float)
    norm = float(np.linalg.norm(vec))
    return bval, ([float(v) for v in vec / norm] if norm > 1e-6 else [0.0, 0.0, 0.0])


def _ge_logical_to_lps(ds: Dataset, logical: list[float]) -> list[float]:
    """GE stores the gradient in its logical frequency/phase/slice frame, with sign conventions
    that depend on the slice orientation. We follow dcm2niix's reading (``geCorrectBvecs``):
    per-orientation sign flips (axial z; sagittal x, y; coronal y, z), y negated, x/y swapped for
    ROW phase encoding, all negated; the result is in the frame (row, -column, normal)."""
    iop = _iop(ds)
    if iop is None:
        return []
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    v = np.array(logical, dtype=float)
    dominant = int(np.argmax(np.abs(normal)))           # 0: sagittal, 1: coronal, 2: axial
    flips = {2: (0, 0, 1), 0: (1, 1, 0), 1: (0, 1, 1)}[dominant]
    v = np.where(np.array(flips, dtype=bool), -v, v)
    v[1] = -v[1]
    if _text(ds, "InPlanePhaseEncodingDirection") == "ROW":
        v = np.array([-v[1], v[0], v[2]])
    v = -v
    return [float(x) for x in v[0] * row - v[1] * col + v[2] * normal]


def asl_context(ds: Dataset) -> str:
    """'LABEL', 'CONTROL', 'M_ZERO_SCAN' or '' (public ASLContext, else Philips' private label type)."""
    value = _text(ds, (0x0018, 0x9257)) or (_text(ds, _PHILIPS_LABEL) if _vendor(ds) == "philips" else "")
    return value if value in ("LABEL", "CONTROL", "M_ZERO_SCAN") else ""


def standardize(img: Dataset, isotropic: bool = False) -> None:
    """Write the image's vendor diffusion and ASL values into public attributes, in place
    (``isotropic``: the image is a DWI trace, see :func:`tasks.curation.deid.frames.image_set`)."""
    b, g = gradient_lps(img)
    if isotropic:
        img.DiffusionDirectionality = "ISOTROPIC"
    if b is not None:
        img.DiffusionBValue = float(b)
        if g is not None:
            item = Dataset()
            item.DiffusionGradientOrientation = [float(v) for v in g]
            img.DiffusionGradientDirectionSequence = Sequence([item])
        if "DiffusionDirectionality" not in img:
            img.DiffusionDirectionality = "NONE" if b == 0 or g is None or not any(g) else "DIRECTIONAL"
    context = asl_context(img)
    if context and "ASLContext" not in img:
        img.add_new((0x0018, 0x9257), "CS", context)


def _pe_sign(ds: Dataset) -> int | None:
    vendor = _vendor(ds)
    if vendor == "siemens":
        positive = _csa_items(_csa(ds), "PhaseEncodingDirectionPositive")
        if positive:
            try:
                return 1 if int(float(positive[0])) == 1 else -1
            except (TypeError, ValueError):
                return None
        xa = _numbers(ds, (0x0021, 0x111C))     # XA (no CSA header): PhaseEncodingDirectionPositive
        if xa:
            return 1 if int(xa[0]) == 1 else -1
    reorder = _text(ds, (0x0018, 0x9034)) if vendor == "ge" else ""
    if reorder in ("LINEAR", "REVERSE_LINEAR"):
        # GE RX27+: LINEAR is the "flipped" polarity (against the column/row cosine), REVERSE_LINEAR
        # along it, as dcm2niix reads it (its issue 674); reversed pepolar volumes invert it
        sign = 1 if reorder == "REVERSE_LINEAR" else -1
        return -sign if ge_pepolar_reversed(ds) else sign
    return None


def _ge_pepolar_mode(ds: Dataset) -> int:
    """GE research ``epi_pepolar``: (0019,109C) names the sequence, (0019,10B3) says which volumes
    are reversed (1 all, 2 odd TemporalPositionIdentifier, 3 even); 0 for anything else."""
    if _vendor(ds) != "ge" or "EPI_PEPOLAR" not in _text(ds, (0x0019, 0x109C)):
        return 0
    mode = _numbers(ds, (0x0019, 0x10B3))
    return int(mode[0]) if mode else 0


def ge_pepolar_reversed(ds: Dataset) -> bool:
    """A GE ``epi_pepolar`` image acquired with reversed phase encoding: GE stores its rows
    mirrored (dcm2niix mirrors them back)."""
    mode = _ge_pepolar_mode(ds)
    try:
        tpi = int(ds.get("TemporalPositionIdentifier"))
    except (TypeError, ValueError):
        tpi = 0
    return mode == 1 or (mode == 2 and tpi % 2 == 1) or (mode == 3 and tpi > 0 and tpi % 2 == 0)


def ge_pepolar_alternating(ds: Dataset) -> bool:
    """GE ``epi_pepolar`` with forward and reversed volumes in one series (modes 2 and 3)."""
    return _ge_pepolar_mode(ds) in (2, 3)


def _multiband(ds: Dataset, n_slices: int) -> int | None:
    """Siemens: slices sharing the first slice's time in MosaicRefAcqTimes, or the 's' of the
    PAT mode text ("p2s4"), the larger; GE: (0043,10B6)[0]."""
    found = []
    times = [float(t) for t in _csa_items(_csa(ds), "MosaicRefAcqTimes")[:n_slices or None]]
    if len(times) > 3:
        found.append(sum(abs(t - times[0]) < 0.5 for t in times))
    for tag in ((0x0051, 0x1011), (0x0021, 0x1009)):
        match = re.search(r"S(\d+)", _text(ds, tag)) if _vendor(ds) == "siemens" else None
        if match:
            found.append(int(match.group(1)))
    ge = _numbers(ds, _GE_MULTIBAND) if _vendor(ds) == "ge" else []
    if ge and ge[0] >= 1:
        found.append(int(ge[0]))
    best = max(found, default=0)
    return best if best > 1 else None


def describe(img: Dataset, n_slices: int = 0, mosaic: bool = False) -> dict:
    """Series-level acquisition values read from one image of the series (before de-identification).

    Returns:
        ``{"vendor", "pe_axis" ("ROW"/"COL"/None), "pe_sign" (+1 along the axis' direction
        cosine, -1 against it, None unknown), "multiband_factor", "slice_times_ms" (per mosaic
        tile of a mosaic, i.e. per slice in ascending position order; None otherwise)}``.
    """
    axis = _text(img, "InPlanePhaseEncodingDirection") or None
    # a classic Siemens image lists the times in protocol slice order, not position order: mosaics only
    times = [round(float(t), 3) for t in _csa_items(_csa(img), "MosaicRefAcqTimes")[:n_slices]] if mosaic else []
    return {"vendor": _vendor(img), "pe_axis": axis if axis in ("ROW", "COL") else None,
            "pe_sign": _pe_sign(img) if axis in ("ROW", "COL") else None,
            "multiband_factor": _multiband(img, n_slices), "slice_times_ms": times or None}


def pe_world_vector(iop: np.ndarray, axis: str | None, sign: int | None) -> np.ndarray | None:
    """The phase-encoding direction in patient LPS (unit; sign 0 treated as +1 for the axis alone)."""
    if axis not in ("ROW", "COL") or iop is None:
        return None
    # ROW: phase encoded along a row (the row cosine); COL: along a column (the column cosine)
    vec = np.asarray(iop[:3] if axis == "ROW" else iop[3:], dtype=float)
    return vec * (sign or 1)
