"""PNG slices with per-slice min-max normalisation (the MRI-CORE recipe).

Each image is written as stored (Rows x Columns, no flips): 8-bit grayscale, no text
or metadata chunks (a PNG tEXt chunk is an easy place for PHI to leak into). Files go
to a temp name in the same folder and are renamed, so a killed run leaves no half file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from PIL import Image

from mrifoundry.atomic import atomic_path
from mrifoundry.errors import CurationError, InsufficientDiskSpace, RejectedItem, is_disk_full
from mrifoundry.tasks.curation.continuity.checks import Volume
from mrifoundry.tasks.curation.continuity.screens import MalformedHeader, rescale


@dataclass
class SliceRecord:
    index: int
    temporal_index: int
    position_mm: float
    path: Path
    width: int
    height: int
    min_value: float
    max_value: float


def slice_name(temporal_index: int, index: int) -> str:
    return f"t{temporal_index:02d}_z{index:04d}.png"


def read_slice(path: Path, read: Callable[[Path], pydicom.Dataset] = pydicom.dcmread) -> np.ndarray:
    """Pixels of one single-frame grayscale image as float64, RescaleSlope/Intercept applied.

    Raises:
        ValueError: the image is not a single 2D grayscale frame.
        MalformedHeader: RescaleSlope/RescaleIntercept is not one finite number.
    """
    ds = read(path)
    slope, intercept = rescale(ds)   # before decoding: a malformed header is no decoder error
    arr = ds.pixel_array
    if arr.ndim != 2:
        raise ValueError(f"expected one 2D grayscale frame, got {arr.ndim} dimensions")
    arr = arr.astype(np.float64)
    if slope is not None or intercept is not None:
        arr = arr * (slope if slope is not None else 1.0) + (intercept or 0.0)
    return arr


def normalize_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max to 0..255, rounded half to even (``np.rint``); a constant slice becomes all 0."""
    lo, hi = float(arr.min()), float(arr.max())
    if hi == lo:
        return np.zeros(arr.shape, dtype=np.uint8)
    return np.clip(np.rint((arr - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def _write_png(u8: np.ndarray, path: Path) -> None:
    with atomic_path(path, mkdir=False) as tmp:
        # 2D uint8 -> mode "L"; no pnginfo/dpi arguments: Pillow writes only IHDR, IDAT, IEND
        Image.fromarray(u8).save(tmp, format="PNG")


def volume_to_png(volume: Volume, out_dir: Path,
                  read: Callable[[Path], pydicom.Dataset] = pydicom.dcmread) -> list[SliceRecord]:
    """Write one PNG per slice of ``volume`` into ``out_dir``.

    Args:
        volume: a checked volume (files sorted along the slice normal).
        out_dir: ``OUT/research/png/<exam_id>/<series_id>``; created if missing.
        read: how a file is read (:class:`tasks.curation.convert.reads.SharedReads` shares
            the reads with the NIfTI converter).

    Returns:
        One :class:`SliceRecord` per slice, in volume order; min/max are the rescaled values.

    Raises:
        InsufficientDiskSpace: reason ``disk_full``.
        RejectedItem: reason ``malformed_header`` (RescaleSlope/Intercept unreadable; the
            continuity screens normally reject such a series first).
        CurationError: reason ``convert_error`` for any other failure.
    """
    out_dir = Path(out_dir)
    item = out_dir.name  # the series id, by the layout in docs/contracts.md
    records = []
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        for index, (path, position) in enumerate(zip(volume.files, volume.positions)):
            arr = read_slice(path, read)
            target = out_dir / slice_name(volume.temporal_index, index)
            _write_png(normalize_uint8(arr), target)
            records.append(SliceRecord(index, volume.temporal_index, float(position), target,
                                       width=int(arr.shape[1]), height=int(arr.shape[0]),
                                       min_value=float(arr.min()), max_value=float(arr.max())))
    except MalformedHeader as e:
        raise RejectedItem(item, e.reason, e.message) from e
    except OSError as e:
        if is_disk_full(e):
            raise InsufficientDiskSpace(item, "disk_full", "no space left while writing PNG slices") from e
        raise CurationError(item, "convert_error", f"{type(e).__name__} while writing PNG slices") from e
    except Exception as e:  # noqa: BLE001 - decoder/Pillow errors of many types
        raise CurationError(item, "convert_error", f"{type(e).__name__} while writing PNG slices") from e
    return records
