"""Header screens of the continuity stage: objects, pixel encodings and geometry values we
cannot convert, each rejected with its own reason code (docs/bad-input.md).

Kept apart from :mod:`tasks.curation.continuity.checks` (which imports these) to keep both small.
"""
from __future__ import annotations

import math

import numpy as np
import pydicom
from pydicom.dataset import Dataset

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


def int_of(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    try:
        return int(ds.get(keyword, default))
    except (TypeError, ValueError):
        return None


def check_format(headers: list[Dataset]) -> None:
    """Objects and pixel encodings we do not convert, each with its own reason (headers only)."""
    for ds in headers:
        if (int_of(ds, "NumberOfFrames", 1) or 1) > 1 or str(ds.get("SOPClassUID", "")) in _MULTIFRAME_CLASSES:
            raise Reject("multiframe_unsupported", "a multi-frame object (NumberOfFrames > 1 or Enhanced MR)")
    for ds in headers:
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
        if (int_of(ds, "SamplesPerPixel", 1) or 1) != 1 or photometric not in _MONOCHROME:
            raise Reject("color_image", "SamplesPerPixel > 1 or a colour PhotometricInterpretation")
    for ds in headers:
        allocated, stored = int_of(ds, "BitsAllocated"), int_of(ds, "BitsStored")
        if any(k in ds for k in FLOAT_PIXELS):
            raise Reject("unsupported_pixel_format", "float pixel data (FloatPixelData/DoubleFloatPixelData)")
        if (allocated not in (8, 16, 32) or stored is None or not 1 <= stored <= allocated
                or int_of(ds, "PixelRepresentation", 0) not in (0, 1)):
            raise Reject("unsupported_pixel_format", "BitsAllocated/BitsStored/PixelRepresentation not supported")
    uids = [str(ds.get("SOPInstanceUID", "")) for ds in headers]
    if len(set(uids)) < len(uids):
        raise Reject("duplicate_instance", f"{len(uids) - len(set(uids))} repeated SOPInstanceUID(s)")


def ipp(ds: Dataset) -> np.ndarray:
    return np.array([float(v) for v in ds.ImagePositionPatient])


def valid_position(ds: Dataset) -> bool:
    """IPP: three finite numbers; IOP: two finite, unit, orthogonal direction cosines."""
    try:
        pos = ipp(ds)
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    except (AttributeError, TypeError, ValueError):
        return False
    if pos.shape != (3,) or iop.shape != (6,) or not (np.all(np.isfinite(pos)) and np.all(np.isfinite(iop))):
        return False
    row, col = iop[:3], iop[3:]
    return (abs(np.linalg.norm(row) - 1) < UNIT_TOLERANCE and abs(np.linalg.norm(col) - 1) < UNIT_TOLERANCE
            and abs(float(np.dot(row, col))) < UNIT_TOLERANCE)


def spacing(ds: Dataset) -> tuple[float, float] | None:
    """PixelSpacing as two finite positive floats, else None."""
    try:
        values = tuple(float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError):
        return None
    return values if len(values) == 2 and all(math.isfinite(v) and v > 0 for v in values) else None
