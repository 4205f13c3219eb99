"""The quality record of one converted series: its metrics (iqm.py) and a three-plane thumbnail,
from the RAS array the converter has just written (no second read of the NIfTI).

The NIfTI is RAS-canonical (nibabel.as_closest_canonical), so voxel axes 0, 1, 2 run along
R, A, S: the slab checks run along the acquisition's slice axis read from its orientation, and the
ghost ratio along the phase-encoding axis of the BIDS sidecar (``i``/``j``/``k`` are those axes).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
from PIL import Image

from mrifoundry.atomic import atomic_path
from mrifoundry.tasks.curation.quality.iqm import IQM_NAMES, iqms
from mrifoundry.tasks.curation.quality.masks import masks_of

__all__ = ["IQM_VERSION", "VOXEL_BUDGET", "in_plane_stride", "pe_axis", "series_quality", "slab_axis", "three_plane_thumbnail"]

#: bump when a metric's definition changes: rows of another version are not compared in z-scores
IQM_VERSION = "1"
THUMB = 128
#: voxels the metrics read at most: larger volumes are measured on an in-plane strided sub-grid
VOXEL_BUDGET = 1 << 19


def slab_axis(orientation: str | None) -> int:
    """RAS voxel axis normal to the acquired slices (axial, or unknown/oblique: 2)."""
    return {"sagittal": 0, "coronal": 1}.get(orientation or "", 2)


def pe_axis(phase_encoding_direction: str | None) -> int | None:
    """Voxel axis of a BIDS PhaseEncodingDirection (``j-`` → 1), or None."""
    if not phase_encoding_direction or phase_encoding_direction[0] not in "ijk":
        return None
    return "ijk".index(phase_encoding_direction[0])


def _window(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:   # one non-zero value (a mask-like image): white on black; an empty image stays black
        if hi <= 0:
            return np.zeros(a.shape, np.uint8)
        lo = 0.0
    return (np.clip((a - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def _panel(plane: np.ndarray, aspect: float, lo: float, hi: float) -> Image.Image:
    """One plane, first axis left→right and second bottom→top (the RAS array shows superior and
    anterior up), fitted into a THUMB × THUMB square at its physical aspect (``aspect`` = the
    horizontal voxel size / the vertical one), letterboxed."""
    img = Image.fromarray(_window(np.rot90(plane), lo, hi))
    w_phys, h_phys = img.width * aspect, float(img.height)
    scale = THUMB / max(w_phys, h_phys, 1e-9)
    w, h = max(1, round(w_phys * scale)), max(1, round(h_phys * scale))
    square = Image.new("L", (THUMB, THUMB), 0)
    square.paste(img.resize((w, h), Image.BILINEAR), ((THUMB - w) // 2, (THUMB - h) // 2))
    return square


def three_plane_thumbnail(volume: np.ndarray, zooms, out_path: Path, window_from: np.ndarray | None = None) -> Path:
    """Sagittal | coronal | axial mid-slices of a 3D RAS volume, windowed at the 0.5–99.5 %
    percentiles of the non-zero voxels (of ``window_from``, a sub-grid, when given), as one grey
    PNG (no metadata chunks)."""
    v = np.asarray(volume)
    w = np.asarray(window_from if window_from is not None else v)
    nz = w[w != 0]
    lo, hi = (np.percentile(nz, [0.5, 99.5]) if nz.size else (0.0, 0.0))
    zx, zy, zz = (float(z) for z in zooms[:3])
    cx, cy, cz = (s // 2 for s in v.shape)
    planes = (v[cx], v[:, cy], v[:, :, cz])
    panels = [_panel(np.asarray(p, np.float32), a, lo, hi) for p, a in zip(planes, (zy / zz, zx / zz, zx / zy))]
    canvas = Image.new("L", (sum(p.width for p in panels) + 2 * 4, THUMB), 0)
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + 4
    with atomic_path(out_path) as tmp:
        canvas.save(tmp, format="PNG")
    return out_path


def in_plane_stride(shape, axis: int, budget: int = VOXEL_BUDGET) -> int:
    """Stride k for the two in-plane axes so that the volume read holds at most ``budget`` voxels.
    Every slice is kept (the slab checks must see a single dropped slice) and every k-th voxel in
    plane is taken, not averaged: noise statistics per voxel stay those of the image, so SNR, the
    air's MAD and QI1 are estimated, not changed (averaging k² voxels would divide σ by k)."""
    n = int(np.prod(shape))
    return max(1, math.ceil(math.sqrt(n / budget))) if n > budget else 1


def _clean(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def series_quality(data: np.ndarray, zooms, orientation: str | None, phase_encoding_direction: str | None,
                   thumb_path: Path | None = None) -> dict:
    """Metrics of a converted series (the middle time point of a 4D array) and, with ``thumb_path``,
    its thumbnail; returns the series_quality columns of catalog/schema_quality.py (without ids;
    ``thumb_path`` absolute, the stage makes it relative)."""
    t0 = time.perf_counter()
    full = np.asarray(data)
    if full.ndim == 4:
        full = full[..., full.shape[3] // 2]
    ax, pe = slab_axis(orientation), pe_axis(phase_encoding_direction)
    k = in_plane_stride(full.shape, ax)
    v = np.asarray(full[tuple(slice(None) if a == ax else slice(None, None, k) for a in range(3))], dtype=np.float32)
    m = masks_of(v)
    got = iqms(v, axis=ax, pe_axis=pe, masks=m)
    if thumb_path is not None:
        three_plane_thumbnail(full, zooms, thumb_path, window_from=v)
    return {**{k: _clean(got[k]) for k in IQM_NAMES}, "slab_axis": ax, "pe_axis": pe,
            "foreground_fraction": float(m.foreground.mean()), "stride": k,
            "thumb_path": str(thumb_path) if thumb_path is not None else None,
            "iqm_seconds": round(time.perf_counter() - t0, 4), "iqm_version": IQM_VERSION}
