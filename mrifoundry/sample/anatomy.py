"""Real head anatomy: nilearn's bundled MNI152 templates resliced into a series' geometry.

The templates live in MNI world space, which is RAS (+x towards the patient's right,
+y anterior, +z superior); DICOM patient space is LPS (+x left, +y posterior, +z
superior). So x_RAS = -x_LPS, y_RAS = -y_LPS, z equal, and an LPS point p samples the
template voxel ``inv(affine) @ (-p_x, -p_y, p_z, 1)``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

# Tissue probability channels stored by prepare_mni, in this order; they index contrast.TISSUES.
MNI_CHANNELS = ("gm", "wm", "csf", "bone", "fat")

# Where each head protocol centres its field of view, in LPS mm (MNI origin = anterior commissure).
HEAD_CENTERS = {
    "mni": (0.0, 18.0, 15.0),
    "mni_face": (0.0, -55.0, -20.0),
    "mni_orbits": (0.0, -40.0, -5.0),
    "mni_iac": (0.0, 25.0, -28.0),
    "mni_pituitary": (0.0, 5.0, -12.0),
}


def prepare_mni(path: Path) -> list[list[float]]:
    """Write the tissue channels (uint8 probabilities × 255, shape (5, X, Y, Z)) to ``path`` (.npy).

    GM/WM come from nilearn's templates, CSF is the rest of the brain mask; a skull and a
    fatty scalp are added as shells at 2–7 mm and 7–12 mm outside the brain so that heads
    look like heads. Returns the template affine (voxel → RAS mm). Works offline: the
    templates ship inside the nilearn package.
    """
    from nilearn.datasets import load_mni152_gm_template, load_mni152_template, load_mni152_wm_template

    t1 = load_mni152_template(resolution=1)
    gm = np.asarray(load_mni152_gm_template(resolution=1).dataobj, dtype=np.float32)
    wm = np.asarray(load_mni152_wm_template(resolution=1).dataobj, dtype=np.float32)
    gm, wm = gm / max(gm.max(), 1e-6), wm / max(wm.max(), 1e-6)
    brain = np.asarray(t1.dataobj) > 0
    csf = np.where(brain, np.clip(1.0 - gm - wm, 0.0, 1.0), 0.0)
    # distance outside the brain on a 2 mm grid (4x cheaper), then back to 1 mm
    dist = ndimage.distance_transform_edt(~brain[::2, ::2, ::2]) * 2.0
    dist = np.repeat(np.repeat(np.repeat(dist, 2, 0), 2, 1), 2, 2)[: brain.shape[0], : brain.shape[1],
                                                                    : brain.shape[2]]
    outside = ~brain
    csf = np.where(outside & (dist <= 2.5), 1.0, csf)
    bone = (outside & (dist > 2.5) & (dist <= 7.0)).astype(np.float32)
    fat = (outside & (dist > 7.0) & (dist <= 12.0)).astype(np.float32)
    stack = np.stack([gm, wm, csf, bone, fat])
    np.save(path, np.round(stack * 255).astype(np.uint8))
    return np.asarray(t1.affine, dtype=float).tolist()


_CACHE: dict[str, np.ndarray] = {}


def _channels(path: str) -> np.ndarray:
    # each worker maps the file once; the OS shares the pages between processes
    if path not in _CACHE:
        _CACHE[path] = np.load(path, mmap_mode="r")
    return _CACHE[path]


def lps_to_mni_voxel(coords_lps: np.ndarray, affine) -> np.ndarray:
    """(3, ...) LPS mm → (3, ...) template voxel indices (float)."""
    ras = np.stack([-coords_lps[0], -coords_lps[1], coords_lps[2]]).reshape(3, -1).astype(np.float64)
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    vox = inv[:3, :3] @ ras + inv[:3, 3:4]
    return vox.reshape(coords_lps.shape)


def mni_signal(coords_lps: np.ndarray, mni_path: str, affine, values) -> np.ndarray:
    """Image intensity at the LPS points (trilinear, zero outside the template).

    ``values`` = signal of each MNI_CHANNELS tissue. The weighted sum of the channels is
    built once per contrast and worker (one interpolation per series instead of five).
    """
    key = (mni_path, tuple(float(v) for v in values))
    vol = _SIGNAL.get(key)
    if vol is None:
        if len(_SIGNAL) >= 8:
            _SIGNAL.pop(next(iter(_SIGNAL)))
        chans = _channels(mni_path)
        vol = np.zeros(chans.shape[1:], dtype=np.float32)
        for i, v in enumerate(values):
            vol += np.float32(v / 255.0) * chans[i]
        _SIGNAL[key] = vol
    vox = lps_to_mni_voxel(coords_lps, affine).reshape(3, -1)
    return trilinear(vol, vox).reshape(coords_lps.shape[1:])


def trilinear(vol: np.ndarray, vox: np.ndarray) -> np.ndarray:
    """Trilinear samples of ``vol`` at voxel coordinates (3, N); 0 outside.

    Same values as ``ndimage.map_coordinates(order=1)`` inside the volume, about twice as
    fast (8 flat gathers instead of the generic spline loop).
    """
    shape = np.array(vol.shape)[:, None]
    i0 = np.floor(vox).astype(np.int64)
    inside = np.all((i0 >= 0) & (i0 < shape - 1), axis=0)
    i0 = np.where(inside, i0, 0)
    fx, fy, fz = (vox - i0).astype(np.float32)
    s1, s2 = vol.shape[1] * vol.shape[2], vol.shape[2]
    flat = vol.ravel()
    base = i0[0] * s1 + i0[1] * s2 + i0[2]
    out = np.zeros(vox.shape[1], dtype=np.float32)
    for dx, wx in ((0, 1 - fx), (s1, fx)):
        for dy, wy in ((0, 1 - fy), (s2, fy)):
            idx = base + dx + dy
            out += wx * wy * ((1 - fz) * flat[idx] + fz * flat[idx + 1])
    return np.where(inside, out, np.float32(0))


_SIGNAL: dict[tuple, np.ndarray] = {}
