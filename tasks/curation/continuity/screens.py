"""Header screens of the continuity stage: objects, pixel encodings and geometry values we
cannot convert, each rejected with its own reason code (docs/bad-input.md).

Kept apart from :mod:`tasks.curation.continuity.checks` (which imports these) to keep both small.
"""
from __future__ import annotations

import math
import re

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

FLOAT_PIXELS = ("FloatPixelData", "DoubleFloatPixelData")
_MONOCHROME = frozenset({"MONOCHROME1", "MONOCHROME2"})
# SOP classes whose single file holds a whole multi-frame volume (per-frame functional groups)
_MULTIFRAME_CLASSES = frozenset({pydicom.uid.EnhancedMRImageStorage, pydicom.uid.EnhancedMRColorImageStorage,
                                 pydicom.uid.LegacyConvertedEnhancedMRImageStorage})
UNIT_TOLERANCE = 0.05   # IOP direction cosines: |norm - 1| and |row · col| above this are degenerate


class Reject(Exception):
    """A data-quality rejection of the series: reason code + PHI-free message."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason, self.message = reason, message


# --------------------------------------------------------------------------- header values
# Every header value the volume needs is read through these helpers: a value that cannot be
# coerced to its type (text in a number, wrong VM, wrong VR) raises MalformedHeader, which
# check_series turns into the rejection ``malformed_header``. Absent or empty is None: what
# absence means (a default, ``missing_geometry`` …) stays with the caller, and so does
# finiteness (NaN/inf parse here; ``missing_geometry`` rejects them in geometry).
_TM = re.compile(r"\d{2}(:?\d{2}(:?\d{2}(\.\d{1,6})?)?)?")


class MalformedHeader(Reject):
    """An attribute's value cannot be read as its type. The message names the attribute
    keyword and what is wrong, never the value (PHI rule)."""

    def __init__(self, keyword: str, why: str):
        super().__init__("malformed_header", f"{keyword}: {why}")
        self.keyword, self.why = keyword, why


def header_get(ds: Dataset, keyword: str, default=None):
    """``ds.get(keyword, default)``; pydicom decodes a stored value on first access.

    Raises:
        MalformedHeader: the value cannot be decoded (a VR it does not know, a binary value
            whose length is no multiple of its item size …).
    """
    try:
        return ds.get(keyword, default)
    except Exception as e:  # noqa: BLE001 - pydicom's decoders raise many types
        raise MalformedHeader(keyword, "value cannot be decoded") from e


def header_values(ds: Dataset, keyword: str) -> list | None:
    """The element's values as a list (VM 1 = one item), or None when absent or blank.

    Raises:
        MalformedHeader: pydicom cannot decode the stored value.
    """
    value = header_get(ds, keyword)
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    if not values or (len(values) == 1 and isinstance(values[0], (str, bytes)) and not values[0].strip()):
        return None
    return values


def _number(keyword: str, value, what: str = "not a number") -> float:
    if isinstance(value, bool) or isinstance(value, (bytes, bytearray)):
        raise MalformedHeader(keyword, what)
    try:
        return float(value.strip() if isinstance(value, str) else value)
    except (TypeError, ValueError, OverflowError):
        raise MalformedHeader(keyword, what) from None


def header_floats(ds: Dataset, keyword: str, n: int | None = None) -> tuple[float, ...] | None:
    """``keyword``'s ``n`` values as floats (any count >= 1 when ``n`` is None); None when absent.

    Raises:
        MalformedHeader: a value is not a number, or there are not exactly ``n`` values.
    """
    values = header_values(ds, keyword)
    if values is None:
        return None
    if n is not None and len(values) != n:
        raise MalformedHeader(keyword, f"expected {n} value(s), found {len(values)}")
    return tuple(_number(keyword, v) for v in values)


def header_float(ds: Dataset, keyword: str) -> float | None:
    """A single-valued number (DS/FD/IS …) as a float; None when absent. Raises MalformedHeader."""
    values = header_floats(ds, keyword, 1)
    return None if values is None else values[0]


def _single(ds: Dataset, keyword: str):
    """The one value of ``keyword``; None when absent. Raises MalformedHeader for several."""
    values = header_values(ds, keyword)
    if values is None:
        return None
    if len(values) != 1:
        raise MalformedHeader(keyword, f"expected 1 value, found {len(values)}")
    return values[0]


def header_int(ds: Dataset, keyword: str) -> int | None:
    """A single-valued integer (US/IS; an integral DS such as ``2.0`` too); None when absent.

    Raises:
        MalformedHeader: not a single value, not a number, or not a whole number.
    """
    value = _single(ds, keyword)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return int(value)
    number = _number(keyword, value, "not an integer")
    if not math.isfinite(number) or number != int(number):
        raise MalformedHeader(keyword, "not an integer")
    return int(number)


def header_texts(ds: Dataset, keyword: str) -> list[str]:
    """A code string's values (CS, e.g. ImageType) as a list of str; [] when absent.

    Raises:
        MalformedHeader: a value is not text (a number or bytes stored under a wrong VR).
    """
    values = header_values(ds, keyword) or []
    if not all(isinstance(v, str) for v in values):
        raise MalformedHeader(keyword, "not text")
    return [str(v) for v in values]


def header_time(ds: Dataset, keyword: str) -> str | None:
    """A TM value (``HHMMSS.ffffff``, or the old ``HH:MM:SS``) without colons, sortable as text;
    None when absent.

    Raises:
        MalformedHeader: not a single value, or not a time.
    """
    value = _single(ds, keyword)
    if value is None:
        return None
    if not isinstance(value, str) or not _TM.fullmatch(value.strip()):
        raise MalformedHeader(keyword, "not a time (HHMMSS.ffffff)")
    return value.strip().replace(":", "")


def check_format(headers: list[Dataset]) -> None:
    """Objects and pixel encodings we do not convert, each with its own reason (headers only).

    Raises:
        MalformedHeader: a pixel-module value (Rows, Columns, BitsAllocated, BitsStored,
            PixelRepresentation, SamplesPerPixel, NumberOfFrames, RescaleSlope/Intercept)
            that cannot be read as its type.
    """
    for ds in headers:
        sop_class = str(header_get(ds, "SOPClassUID", ""))
        if sop_class in _MULTIFRAME_CLASSES or (header_int(ds, "NumberOfFrames") or 1) > 1:
            raise Reject("multiframe_unsupported", "a multi-frame object (NumberOfFrames > 1 or Enhanced MR)")
    for ds in headers:
        photometric = str(header_get(ds, "PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if (header_int(ds, "SamplesPerPixel") or 1) != 1 or photometric not in _MONOCHROME:
            raise Reject("color_image", "SamplesPerPixel > 1 or a colour PhotometricInterpretation")
    for ds in headers:
        if any(k in ds for k in FLOAT_PIXELS):
            raise Reject("unsupported_pixel_format", "float pixel data (FloatPixelData/DoubleFloatPixelData)")
        header_int(ds, "Rows"), header_int(ds, "Columns")   # read as integers: malformed ones reject here
        allocated, stored = header_int(ds, "BitsAllocated"), header_int(ds, "BitsStored")
        representation = header_int(ds, "PixelRepresentation")
        if (allocated not in (8, 16, 32) or stored is None or not 1 <= stored <= allocated
                or (representation or 0) not in (0, 1)):
            raise Reject("unsupported_pixel_format", "BitsAllocated/BitsStored/PixelRepresentation not supported")
        rescale(ds)
    uids = [str(header_get(ds, "SOPInstanceUID", "")) for ds in headers]
    if len(set(uids)) < len(uids):
        raise Reject("duplicate_instance", f"{len(uids) - len(set(uids))} repeated SOPInstanceUID(s)")


def rescale(ds: Dataset) -> tuple[float | None, float | None]:
    """(RescaleSlope, RescaleIntercept), each None when absent.

    Raises:
        MalformedHeader: either is not one finite number.
    """
    out = []
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        value = header_float(ds, keyword)
        if value is not None and not math.isfinite(value):
            raise MalformedHeader(keyword, "not a finite number")
        out.append(value)
    return out[0], out[1]


def iop(ds: Dataset) -> np.ndarray | None:
    """ImageOrientationPatient as 6 floats; None when absent. Raises MalformedHeader."""
    values = header_floats(ds, "ImageOrientationPatient", 6)
    return None if values is None else np.array(values)


def ipp(ds: Dataset) -> np.ndarray:
    """ImagePositionPatient as 3 floats.

    Raises:
        MalformedHeader: not 3 numbers. Reject ``missing_geometry``: absent.
    """
    values = header_floats(ds, "ImagePositionPatient", 3)
    if values is None:
        raise Reject("missing_geometry", "an image lacks ImageOrientationPatient/ImagePositionPatient")
    return np.array(values)


def valid_position(ds: Dataset) -> bool:
    """IPP: three finite numbers; IOP: two finite, unit, orthogonal direction cosines.

    Raises:
        MalformedHeader: IPP/IOP present but not 3/6 numbers.
    """
    pos, cosines = header_floats(ds, "ImagePositionPatient", 3), iop(ds)
    if pos is None or cosines is None or not (np.all(np.isfinite(pos)) and np.all(np.isfinite(cosines))):
        return False
    row, col = cosines[:3], cosines[3:]
    return (abs(np.linalg.norm(row) - 1) < UNIT_TOLERANCE and abs(np.linalg.norm(col) - 1) < UNIT_TOLERANCE
            and abs(float(np.dot(row, col))) < UNIT_TOLERANCE)


def spacing(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing as two finite positive floats, else None (absent, non-finite, not positive).

    Raises:
        MalformedHeader: present but not two numbers.
    """
    values = header_floats(ds, "PixelSpacing", 2)
    return values if values is not None and all(math.isfinite(v) and v > 0 for v in values) else None
