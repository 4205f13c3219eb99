"""Synthetic series for the bench (tests/dicom_factory.write_series with realistic geometry)."""
from __future__ import annotations

from pathlib import Path

from tests.dicom_factory import SAGITTAL, write_series


def make_series(out_dir: Path, size: int, n_slices: int, **extra) -> list[Path]:
    """A sagittal size²×n_slices uint16 series with a ~200 mm field of view and 3 mm slices
    (so 1 mm resampling grows the slice axis 3× and shrinks 512² in-plane, as in real knees)."""
    pixel = 200.0 / size
    return write_series(out_dir, n_slices=n_slices, rows=size, cols=size, iop=SAGITTAL,
                        spacing=(pixel, pixel), step=3.0, series_description="SAG T2 FS", **extra)
