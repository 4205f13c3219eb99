"""Series geometry in DICOM patient coordinates (LPS: +x left, +y posterior, +z head).

A series is a stack of parallel planes: ``row_dir`` (along a row, i.e. increasing column
index) and ``col_dir`` (down a column) span each plane; slices step along
``normal = row_dir × col_dir`` by ``spacing``. ImagePositionPatient is the centre of
the first transmitted pixel (row 0, column 0).
"""
from __future__ import annotations

import numpy as np

# (row_dir, col_dir) of the standard planes, as scanners write them.
_PLANES = {
    "axial": ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0)),
    "coronal": ((1.0, 0.0, 0.0), (0.0, 0.0, -1.0)),
    "sagittal": ((0.0, 1.0, 0.0), (0.0, 0.0, -1.0)),
}
OBLIQUE_DEG = 40.0  # well past any "closest standard plane" tolerance


def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def orientation_vectors(orientation: str, oblique_deg: float = OBLIQUE_DEG) -> tuple[np.ndarray, np.ndarray]:
    """(row_dir, col_dir) unit vectors; "oblique" is a coronal plane turned about the S–I axis."""
    if orientation == "oblique":
        r, c = _PLANES["coronal"]
        rot = _rot_z(oblique_deg)
        return rot @ np.array(r), rot @ np.array(c)
    r, c = _PLANES[orientation]
    return np.array(r), np.array(c)


def iop(row_dir: np.ndarray, col_dir: np.ndarray) -> list[float]:
    """ImageOrientationPatient, rounded so that the text is stable and exact enough."""
    return [round(float(v), 6) for v in (*row_dir, *col_dir)]


def slice_positions(center, row_dir, col_dir, rows: int, cols: int, pixel_mm: float,
                    n_slices: int, spacing: float) -> np.ndarray:
    """ImagePositionPatient of each slice, shape (n_slices, 3), stepping along +normal."""
    center = np.asarray(center, dtype=float)
    normal = np.cross(row_dir, col_dir)
    first = center - row_dir * pixel_mm * (cols - 1) / 2 - col_dir * pixel_mm * (rows - 1) / 2
    offsets = (np.arange(n_slices) - (n_slices - 1) / 2) * spacing
    return np.round(first[None, :] + offsets[:, None] * normal[None, :], 4)


def voxel_coords(ipp: np.ndarray, row_dir, col_dir, rows: int, cols: int, pixel_mm: float) -> np.ndarray:
    """LPS coordinates of every pixel of the slices at ``ipp``: shape (3, n, rows, cols)."""
    r = np.arange(rows, dtype=np.float32)[:, None] * pixel_mm
    c = np.arange(cols, dtype=np.float32)[None, :] * pixel_mm
    out = np.empty((3, len(ipp), rows, cols), dtype=np.float32)
    for a in range(3):
        plane = c * np.float32(row_dir[a]) + r * np.float32(col_dir[a])
        out[a] = np.asarray(ipp, dtype=np.float32)[:, a, None, None] + plane[None]
    return out
