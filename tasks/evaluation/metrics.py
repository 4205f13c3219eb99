"""Segmentation metrics for few-shot evaluation: 2D DSC, 3D DSC and 3D NSD, as in MRI-CORE.

Arrays in, numbers out. Inputs are binary masks ``[N, H, W]`` (one row per slice) plus a
patient id per slice for the 3D metrics. The arithmetic is MONAI's
(``monai.metrics.compute_dice`` and ``compute_surface_dice``); this module fixes the
conventions where MONAI's defaults differ from MRI-CORE's ``utils/metrics.py``:

Empty masks (both DSC and NSD)
    Both empty -> 1.0; exactly one empty -> 0.0. MRI-CORE's ``(2|A∩B| + 1e-6) / (|A|+|B| + 1e-6)``
    gives 1.0 and ~1e-6 in those cases. MONAI's ``DiceMetric`` default (``ignore_empty=True``)
    returns NaN for an empty target, so we call ``compute_dice(..., ignore_empty=False)``, which
    gives exactly our rule. ``compute_surface_dice`` returns NaN when both are empty (and warns
    on one empty); we settle empty cases ourselves before calling it.

Surface
    ``mask XOR binary_erosion(mask)`` with SciPy's default structuring element (face
    connectivity: 4-neighbourhood in 2D, 6 in 3D) and everything outside the array counted as
    background, which is MRI-CORE's definition. MONAI's ``get_mask_edges`` (used when
    ``use_subvoxels=False``) computes the same thing: it crops to the union's bounding box with a
    1-voxel zero margin and then calls ``scipy.ndimage.binary_erosion``, so a mask touching the
    array border keeps its border voxels as surface, exactly as without cropping. In a
    per-patient volume ``[S, H, W]`` the erosion is 3D, so the first and last slices (and a
    one-slice "volume") are entirely surface.

Distances
    Euclidean; a surface voxel is "correct" when its distance to the other surface is
    ``<= tolerance``. With ``spacing=None`` the unit is one voxel on every axis (MRI-CORE: 1 voxel
    at 256², slice spacing 1). With ``spacing`` the unit is that of the spacing (mm).

2D DSC
    MRI-CORE averages a DSC pooled over each test batch (``-b`` slices); ours is the mean of
    per-slice DSCs, i.e. MRI-CORE's number with batch size 1, independent of batching.
"""
from __future__ import annotations

import warnings
from collections.abc import Hashable, Sequence

import numpy as np
import torch
from monai.metrics import compute_dice, compute_surface_dice

Spacing = float | Sequence[float] | None


class PatientScores(dict):
    """``{patient_id: score}`` in order of first appearance, plus ``.mean`` over patients."""

    @property
    def mean(self) -> float:
        return float(np.mean(list(self.values()))) if self else float("nan")


def _masks(pred, target, ndim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    p, t = np.asarray(pred).astype(bool), np.asarray(target).astype(bool)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    if ndim is not None and p.ndim != ndim:
        raise ValueError(f"expected {ndim}-D masks, got shape {p.shape}")
    if p.size == 0:
        raise ValueError("empty input")
    return p, t


def group_by_patient(patient_ids: Sequence[Hashable], n: int) -> dict[Hashable, np.ndarray]:
    """Slice indices per patient, patients in order of first appearance, slices in input order."""
    ids = list(patient_ids)
    if len(ids) != n:
        raise ValueError(f"{len(ids)} patient ids for {n} slices")
    groups: dict[Hashable, list[int]] = {}
    for i, pid in enumerate(ids):
        groups.setdefault(pid, []).append(i)
    return {pid: np.asarray(idx) for pid, idx in groups.items()}


def dice(pred, target) -> float:
    """DSC of one mask pair of any dimensionality (empty conventions in the module docstring)."""
    p, t = _masks(pred, target)
    # [B=1, C=1, ...]; ignore_empty=False -> both empty 1.0, one empty 0.0
    return float(compute_dice(torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None],
                              include_background=True, ignore_empty=False)[0, 0])


def dice_2d(pred, target) -> float:
    """MRI-CORE 2D DSC: mean over slices of the per-slice DSC. ``pred``/``target``: [N, H, W] bool."""
    p, t = _masks(pred, target, ndim=3)
    per_slice = compute_dice(torch.from_numpy(p)[:, None], torch.from_numpy(t)[:, None],
                             include_background=True, ignore_empty=False)
    return float(per_slice.double().mean())


def dice_3d(pred, target, patient_ids: Sequence[Hashable]) -> PatientScores:
    """MRI-CORE 3D DSC: DSC of each patient's stacked slices. ``.mean`` is the mean over patients."""
    p, t = _masks(pred, target, ndim=3)
    return PatientScores({pid: dice(p[idx], t[idx])
                          for pid, idx in group_by_patient(patient_ids, len(p)).items()})


def _spacing(spacing: Spacing, ndim: int) -> tuple[float, ...] | None:
    if spacing is None:
        return None
    sp = (float(spacing),) * ndim if np.isscalar(spacing) else tuple(float(s) for s in spacing)
    if len(sp) != ndim or any(not np.isfinite(s) or s <= 0 for s in sp):
        raise ValueError(f"spacing must be {ndim} positive numbers, got {spacing!r}")
    return sp


def surface_dice(pred, target, tolerance: float = 1.0, spacing: Spacing = None) -> float:
    """NSD of one mask pair (2D or 3D): the fraction of both surfaces lying within ``tolerance`` of
    the other surface. ``tolerance`` is in voxels when ``spacing`` is None, else in spacing units."""
    p, t = _masks(pred, target)
    if p.ndim not in (2, 3):
        raise ValueError(f"surface_dice needs 2-D or 3-D masks, got shape {p.shape}")
    if not np.isfinite(tolerance) or tolerance < 0:
        raise ValueError(f"tolerance must be finite and >= 0, got {tolerance}")
    sp = _spacing(spacing, p.ndim)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not (has_p and has_t):
        return 1.0 if has_p == has_t else 0.0
    with warnings.catch_warnings():
        # MONAI 1.6 passes its own deprecated `always_return_as_numpy` argument internally;
        # nothing a caller can change, so only that FutureWarning is silenced.
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        nsd = compute_surface_dice(torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None],
                                   class_thresholds=[float(tolerance)], include_background=True,
                                   distance_metric="euclidean", spacing=sp, use_subvoxels=False)
    return float(nsd[0, 0])


def nsd_3d(pred, target, patient_ids: Sequence[Hashable], tolerance: float = 1.0,
           spacing: Spacing = None) -> PatientScores:
    """MRI-CORE 3D NSD: ``surface_dice`` of each patient's slices stacked in input order as an
    [S, H, W] volume. ``spacing`` is per axis (slice, row, column) or one number; None means
    unit spacing and a tolerance in voxels (MRI-CORE's setting). ``.mean`` is over patients."""
    p, t = _masks(pred, target, ndim=3)
    return PatientScores({pid: surface_dice(p[idx], t[idx], tolerance, spacing)
                          for pid, idx in group_by_patient(patient_ids, len(p)).items()})
