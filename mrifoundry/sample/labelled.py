"""Small labelled segmentation datasets in the nnU-Net layout, generated offline.

``make_mni_wm_dataset``: white-matter segmentation on nilearn's MNI152 T1 template (shipped
inside the nilearn package, nothing is downloaded). Every case is a seeded augmentation of that
one template (small rotation/scale/shift, intensity scaling, noise, its own crop and slab of
slices): cases differ, but they are NOT independent subjects, so scores on them say little
about generalisation. Use them to exercise pipelines, not to benchmark.

``make_phantom_dataset``: a geometric phantom, an ellipsoid "lesion" (label 2) inside an
ellipsoid body (label 1), with per-case anisotropic voxels; odd cases are stored flipped
left-right (LAS) so readers must reorient.

Both write ``imagesTr/<case>_0000.nii.gz``, ``labelsTr/<case>.nii.gz`` and a nnU-Net v2
``dataset.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

MNI_LABELS = {"background": 0, "white_matter": 1}
PHANTOM_LABELS = {"background": 0, "body": 1, "lesion": 2}


def _write_case(out_root: Path, case: str, image: np.ndarray, label: np.ndarray, affine: np.ndarray) -> None:
    for arr, path, dtype in ((image, out_root / "imagesTr" / f"{case}_0000.nii.gz", np.float32),
                             (label, out_root / "labelsTr" / f"{case}.nii.gz", np.uint8)):
        img = nib.Nifti1Image(arr.astype(dtype), affine)
        img.header.set_xyzt_units("mm")
        nib.save(img, path)


def _write_dataset_json(out_root: Path, name: str, labels: dict[str, int], n: int, description: str) -> None:
    meta = {"name": name, "description": description, "channel_names": {"0": "T1"}, "labels": labels,
            "numTraining": n, "file_ending": ".nii.gz"}
    (out_root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")


def _prepare(out_root: Path) -> Path:
    out_root = Path(out_root)
    for sub in ("imagesTr", "labelsTr"):
        (out_root / sub).mkdir(parents=True, exist_ok=True)
    return out_root


def _mni_2mm() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T1 template, WM probability and affine at 2 mm, cropped to the brain's bounding box."""
    from nilearn.datasets import load_mni152_template, load_mni152_wm_template

    t1 = load_mni152_template(resolution=1)
    wm = load_mni152_wm_template(resolution=1)
    # take every second voxel of the 1 mm grids (exact, fast; nilearn's resolution=2 resamples)
    t = np.asarray(t1.dataobj, dtype=np.float32)[::2, ::2, ::2]
    w = np.asarray(wm.dataobj, dtype=np.float32)[::2, ::2, ::2]
    affine = t1.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    idx = np.argwhere(t > 0)
    lo, hi = np.maximum(idx.min(0) - 2, 0), np.minimum(idx.max(0) + 3, t.shape)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    shift = np.eye(4)
    shift[:3, 3] = lo
    return t[crop], w[crop], affine @ shift


def _jitter(rng: np.random.Generator, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Matrix/offset for ndimage.affine_transform: small rotation and scale about the centre, a shift."""
    ax, ay, az = np.deg2rad(rng.uniform(-4, 4, 3))
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = rx @ ry @ rz / rng.uniform(0.95, 1.05)
    centre = (np.asarray(shape) - 1) / 2.0
    offset = centre - m @ centre + rng.uniform(-2, 2, 3)
    return m, offset


def make_mni_wm_dataset(out_root: Path, n_cases: int = 6, seed: int = 0) -> Path:
    """Write ``n_cases`` white-matter cases (label = WM probability > 0.5) derived from MNI152.

    Each case: the 2 mm template, seeded rotation (±4°), scale (±5 %), shift (±2 voxels),
    intensity scale (0.8–1.2) and Gaussian noise (2 % of the maximum), then its own in-plane
    crop and a slab of 20–30 axial slices. Returns ``out_root``.
    """
    out_root = _prepare(out_root)
    t, w, affine = _mni_2mm()
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        m, offset = _jitter(rng, t.shape)
        img = ndimage.affine_transform(t, m, offset, order=1, mode="constant")
        prob = ndimage.affine_transform(w, m, offset, order=1, mode="constant")
        img = img * rng.uniform(0.8, 1.2) + rng.normal(0.0, 0.02 * float(t.max()), img.shape)
        img = np.clip(img, 0, None)
        nz = int(rng.integers(20, 31))
        z0 = int(rng.integers(t.shape[2] // 4, t.shape[2] - nz - t.shape[2] // 6))
        x0, y0 = (int(v) for v in rng.integers(0, 5, 2))
        x1, y1 = t.shape[0] - int(rng.integers(0, 5)), t.shape[1] - int(rng.integers(0, 5))
        crop = (slice(x0, x1), slice(y0, y1), slice(z0, z0 + nz))
        shift = np.eye(4)
        shift[:3, 3] = (x0, y0, z0)
        _write_case(out_root, f"mniwm_{i:03d}", img[crop], (prob[crop] > 0.5).astype(np.uint8), affine @ shift)
    _write_dataset_json(out_root, "mni152-wm", MNI_LABELS, n_cases,
                        "White matter on augmentations of the MNI152 2009 template (nilearn); one template, "
                        "not independent subjects.")
    return out_root


def make_phantom_dataset(out_root: Path, n_cases: int = 6, seed: int = 0) -> Path:
    """Write ``n_cases`` phantoms: body (1) with an ellipsoid lesion (2); returns ``out_root``."""
    out_root = _prepare(out_root)
    for i in range(n_cases):
        rng = np.random.default_rng([seed, 1000 + i])
        nx, ny, nz = 64, 64, int(rng.integers(16, 25))
        zooms = np.array([rng.uniform(0.8, 1.2), rng.uniform(0.8, 1.2), rng.uniform(2.5, 4.0)])
        # physical coordinates (mm) of every voxel centre, origin at the volume centre
        grid = np.stack(np.meshgrid(*(np.arange(n) - (n - 1) / 2 for n in (nx, ny, nz)), indexing="ij"), -1) * zooms
        half = np.array([nx, ny, nz]) * zooms / 2
        body_axes = half * rng.uniform(0.7, 0.85, 3)
        body = (((grid / body_axes) ** 2).sum(-1) <= 1.0)
        les_axes = rng.uniform(4.0, 9.0, 3)
        # lesion centre well inside the body so the lesion never leaves it
        centre = rng.uniform(-0.4, 0.4, 3) * (body_axes - les_axes)
        lesion = ((((grid - centre) / les_axes) ** 2).sum(-1) <= 1.0) & body
        label = body.astype(np.uint8) + lesion.astype(np.uint8)
        bias = 1.0 + 0.1 * grid[..., 0] / half[0]
        img = (100.0 * body + rng.uniform(50, 90) * lesion) * bias + rng.normal(0, 5.0, body.shape)
        affine = np.diag([*zooms, 1.0])
        affine[:3, 3] = -(np.array([nx, ny, nz]) - 1) / 2 * zooms
        if i % 2:  # store as LAS: flip the data along x and the x axis of the affine
            img, label = img[::-1], label[::-1]
            flip = np.eye(4)
            flip[0, 0], flip[0, 3] = -1, nx - 1
            affine = affine @ flip
        _write_case(out_root, f"phantom_{i:03d}", np.clip(img, 0, None), label, affine)
    _write_dataset_json(out_root, "phantom", PHANTOM_LABELS, n_cases,
                        "Geometric phantom: ellipsoid lesion inside an ellipsoid body.")
    return out_root


__all__ = ["make_mni_wm_dataset", "make_phantom_dataset", "MNI_LABELS", "PHANTOM_LABELS"]
