"""A BraTS-style folder generated offline: four MRI contrasts and a nested tumour label.

Real anatomy (nilearn's MNI152 T1 template and its tissue maps at 2 mm, as in
``mrifoundry/sample/labelled.py``) with a synthetic tumour per case: edema (label 2) around an
enhancing rim (4) around a necrotic core (1), at a seeded position in the white matter, after a
small seeded rotation/shift of the head. The four channels are contrast models of the same head
(T1, T1 post-contrast, T2, FLAIR), not acquisitions: use the folder to exercise the BraTS
ingest and 3D fine-tuning, not to benchmark. Layout of BraTS 2021:
``<case>/<case>_{t1,t1ce,t2,flair,seg}.nii.gz``.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mrifoundry.sample.labelled import _jitter

__all__ = ["BRATS_LABELS", "make_brats_like_dataset"]

BRATS_LABELS = {0: "background", 1: "necrotic_core", 2: "edema", 4: "enhancing"}


def _tissues() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(T1, GM, WM, CSF) at 2 mm, cropped to the head, and the affine."""
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template
    t1 = load_mni152_template(resolution=1)
    maps = [np.asarray(m.dataobj, dtype=np.float32)[::2, ::2, ::2]
            for m in (t1, load_mni152_gm_template(resolution=1), load_mni152_wm_template(resolution=1))]
    affine = t1.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    idx = np.argwhere(maps[0] > 0)
    lo, hi = np.maximum(idx.min(0) - 2, 0), np.minimum(idx.max(0) + 3, maps[0].shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    shift = np.eye(4)
    shift[:3, 3] = lo
    return (*[m[crop] for m in maps], affine @ shift)


def make_brats_like_dataset(out_root: Path, n_cases: int = 4, seed: int = 0) -> Path:
    """Write ``n_cases`` BraTS-2021-style cases under ``out_root``; returns ``out_root``."""
    out_root = Path(out_root)
    t1, gm, wm, affine = _tissues()
    csf = np.clip((t1 > 0).astype(np.float32) - gm - wm, 0, 1) * (t1 > 0)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in t1.shape), indexing="ij"), -1).astype(np.float32)
    candidates = np.argwhere(wm > 0.9)
    for i in range(n_cases):
        rng = np.random.default_rng([seed, 2000 + i])
        centre = candidates[rng.integers(len(candidates))].astype(np.float32)
        radius = rng.uniform(5.0, 8.0)                   # voxels (2 mm): a 2–3 cm tumour
        d = np.sqrt((((grid - centre) / rng.uniform(0.8, 1.2, 3)) ** 2).sum(-1))
        label = np.zeros(t1.shape, np.uint8)
        label[d <= radius * 1.8] = 2
        label[d <= radius] = 4
        label[d <= radius * 0.55] = 1
        label[t1 <= 0] = 0
        edema, enh, core = label == 2, label == 4, label == 1
        base_t2 = 0.3 * wm + 0.55 * gm + 1.0 * csf
        channels = {
            "t1": t1 * np.where(core | enh | edema, 0.7, 1.0),
            "t1ce": t1 * np.where(core | edema, 0.7, 1.0) + enh * 0.9 * float(t1.max()),
            "t2": float(t1.max()) * (base_t2 + 0.6 * edema + 0.4 * enh + 0.9 * core),
            "flair": float(t1.max()) * (0.3 * wm + 0.5 * gm + 0.1 * csf + 0.8 * edema + 0.5 * enh + 0.3 * core),
        }
        m, offset = _jitter(rng, t1.shape)
        case = f"BraTS2021_{i:05d}"
        folder = out_root / case
        folder.mkdir(parents=True, exist_ok=True)
        scale = rng.uniform(0.8, 1.2)
        for name, arr in channels.items():
            moved = ndimage.affine_transform(arr, m, offset, order=1, mode="constant")
            noisy = np.clip(moved * scale + rng.normal(0, 0.02 * float(t1.max()), moved.shape), 0, None)
            nib.save(nib.Nifti1Image(noisy.astype(np.float32), affine), folder / f"{case}_{name}.nii.gz")
        seg = ndimage.affine_transform(label, m, offset, order=0, mode="constant")
        nib.save(nib.Nifti1Image(seg.astype(np.uint8), affine), folder / f"{case}_seg.nii.gz")
    return out_root
