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
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from scipy import ndimage

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


# ------------------------------------------------------------------ 3D segmentation: HD95, lesion-wise F1

def field_diagonal(shape: Sequence[int], spacing: Spacing = None) -> float:
    """Diagonal of the field of view, (Σ (n_i · s_i)²)^½ in spacing units: the HD95 of a case where
    exactly one mask is empty (BraTS's 373.13 mm is this at 240 × 240 × 155, 1 mm)."""
    sp = _spacing(spacing, len(shape)) or (1.0,) * len(shape)
    return float(np.sqrt(sum((n * s) ** 2 for n, s in zip(shape, sp))))


def hd95(pred, target, spacing: Spacing = None) -> float:
    """95th-percentile symmetric Hausdorff distance of one mask pair (2D or 3D), in spacing units
    (voxels when None): MONAI's ``compute_hausdorff_distance(percentile=95, directed=False)``, the
    larger of the two directed 95th percentiles (linear interpolation) of the Euclidean distances
    from each surface voxel of one mask to the nearest surface voxel of the other (surface as in
    :func:`surface_dice`). Both empty → 0.0; exactly one empty → :func:`field_diagonal` (MONAI
    gives NaN/inf there, which would drop or break the mean over cases)."""
    p, t = _masks(pred, target)
    if p.ndim not in (2, 3):
        raise ValueError(f"hd95 needs 2-D or 3-D masks, got shape {p.shape}")
    sp = _spacing(spacing, p.ndim)
    has_p, has_t = bool(p.any()), bool(t.any())
    if not (has_p and has_t):
        return 0.0 if has_p == has_t else field_diagonal(p.shape, sp)
    with warnings.catch_warnings():   # MONAI's own deprecated argument, as in surface_dice
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
        hd = compute_hausdorff_distance(torch.from_numpy(p)[None, None], torch.from_numpy(t)[None, None],
                                        include_background=True, distance_metric="euclidean", percentile=95,
                                        directed=False, spacing=sp)
    return float(hd[0, 0])


def lesion_counts(pred, target) -> dict[str, int]:
    """Lesion-wise counts of one mask pair, the ATLAS R2.0 challenge's rule
    (npnl/atlas2_grand_challenge ``isles/scoring.py``, by which BrainSegFounder's ATLAS F1 was scored):
    lesions are connected components with full connectivity (``scipy.ndimage.label`` with a 3×…×3
    structure: 26 neighbours in 3D, 8 in 2D); a ground-truth lesion is a TP when at least one of its
    voxels is predicted, else a FN; a predicted lesion is a FP when none of its voxels is in the ground
    truth. TP are counted on the ground-truth side: one predicted blob over two lesions gives 2 TP,
    two predicted blobs on one lesion give 1 TP and no FP.

    Returns ``{"tp", "fp", "fn", "n_target", "n_pred"}``.
    """
    p, t = _masks(pred, target)
    structure = ndimage.generate_binary_structure(p.ndim, p.ndim)
    lab_t, n_t = ndimage.label(t, structure=structure)
    lab_p, n_p = ndimage.label(p, structure=structure)
    both = p & t
    tp = int(np.count_nonzero(np.unique(lab_t[both])))          # lesions with ≥ 1 predicted voxel
    hit_pred = int(np.count_nonzero(np.unique(lab_p[both])))    # predicted lesions touching the truth
    return {"tp": tp, "fp": int(n_p) - hit_pred, "fn": int(n_t) - tp, "n_target": int(n_t), "n_pred": int(n_p)}


def lesion_f1(pred, target) -> float:
    """Lesion-wise F1 = 2TP / (2TP + FP + FN) with :func:`lesion_counts`; no lesion in either mask → 1.0
    (the ATLAS scorer's ``empty_value``); lesions in only one of them → 0.0."""
    c = lesion_counts(pred, target)
    denom = 2 * c["tp"] + c["fp"] + c["fn"]
    return 1.0 if denom == 0 else 2 * c["tp"] / denom
