"""The review page's copies of the volumes: ``qc/volumes/<series_id>.js``, one classic script per
series that sets ``window.MRIF_VOLUMES[id]`` to a base64 .nii.gz.

Why scripts: the page is opened from file://, where Chromium blocks fetch() and module scripts;
a <script src> still loads. Why copies: the page folder must stand alone, and a viewer needs
less than the training NIfTI — 8-bit (windowed at the 0.5–99.5 % percentiles of the non-zero
voxels), at most :data:`MAX_SIDE` voxels per axis (every k-th voxel), the middle time point of a
4D series — so a 1 mm brain costs about 1 MB instead of 10. A copy newer than its NIfTI is kept.
"""
from __future__ import annotations

import base64
import gzip
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np

from mrifoundry.atomic import atomic_path

__all__ = ["MAX_SIDE", "viewer_copy", "write_viewer_volume"]

MAX_SIDE = 160


def viewer_copy(img: nib.Nifti1Image) -> nib.Nifti1Image:
    """The 8-bit, at most MAX_SIDE³ copy of ``img`` (its affine scaled so it lies where the original does)."""
    data = np.asarray(img.dataobj)
    if data.ndim == 4:
        data = data[..., data.shape[3] // 2]
    k = max(1, math.ceil(max(data.shape[:3]) / MAX_SIDE))
    data = np.asarray(data[::k, ::k, ::k], dtype=np.float32)
    nz = data[data != 0]
    lo, hi = np.percentile(nz, [0.5, 99.5]) if nz.size else (0.0, 1.0)
    scaled = np.clip((data - lo) / max(hi - lo, 1e-9), 0, 1) * 255 if hi > lo else np.zeros(data.shape)
    affine = img.affine.copy()
    affine[:3, :3] = affine[:3, :3] * k
    out = nib.Nifti1Image(scaled.astype(np.uint8), affine)   # a new header: nothing of the original's text
    out.set_qform(affine, code=1)
    out.set_sform(affine, code=1)
    return out


def write_viewer_volume(nifti: Path, out_js: Path, series_id: str) -> int:
    """Write ``out_js`` unless it is newer than ``nifti``; returns the bytes written (0 when kept)."""
    if out_js.exists() and out_js.stat().st_mtime >= nifti.stat().st_mtime:
        return 0
    raw = gzip.compress(viewer_copy(nib.load(str(nifti))).to_bytes(), compresslevel=6, mtime=0)
    text = ("window.MRIF_VOLUMES = window.MRIF_VOLUMES || {};\n"
            f"window.MRIF_VOLUMES[{json.dumps(series_id)}] = \"{base64.b64encode(raw).decode()}\";\n")
    with atomic_path(out_js) as tmp:
        Path(tmp).write_text(text)
    return len(text)
