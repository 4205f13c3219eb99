"""Image-quality metrics of one volume, with MRIQC's definitions where MRIQC has one.

Masks come from :func:`tasks.curation.quality.masks.masks_of` (foreground, air, three intensity
classes: dark, middle, bright). ``σ`` is the standard deviation over the voxels named (ddof 0, as
MRIQC), ``μ`` the mean, MAD the median absolute deviation.

- ``snr`` (MRIQC ``snr``): μ_fg / (σ_fg · √(n / (n − 1))) over the foreground;
- ``snr_dietrich`` (MRIQC ``snr_dietrich``, Dietrich 2007): μ_fg / (σ_air · √(2 / (4 − π))),
  σ_air = 1.4826 · MAD_air (σ of the air voxels when their MAD is 0, e.g. zero-filled air);
- ``cnr`` (MRIQC ``cnr``, Magnotta 2006): |μ_bright − μ_middle| / √(σ_air² + σ_middle² + σ_bright²);
- ``cjv`` (MRIQC ``cjv``, Ganzetti 2016): (σ_bright + σ_middle) / |μ_bright − μ_middle|;
- ``efc`` (MRIQC ``efc``, Atkinson 1997): the entropy of the voxel intensities over the whole
  image, normalised by its maximum (all voxels equal): 0 = all energy in one voxel;
- ``fber`` (MRIQC ``fber``): median(|x_fg|²) / median(|x_air|²); NaN when the air is all zero;
- ``bright2max`` (MRIQC ``wm2max`` with the bright class for WM): median(x_bright) / p99.95(x_fg);
- ``blank_slices``: the share of slices along ``axis``, between the first and the last holding
  foreground, whose mean over the foreground's footprint (its projection along ``axis``) is below
  10 % of the median slice's (a dropped slab: noise only);
- ``saturated_fraction``: the share of foreground voxels at the volume's maximum value (clipping);
- ``slice_jump``: the largest change between adjacent slices along ``axis`` of their mean over the
  foreground's footprint, relative to the median slice mean (a dropped or bright slab);
- ``qi1`` (MRIQC ``qi1``, Mortamet 2009, step 1): the share of air voxels that hold artefact
  signal — air voxels whose robust z (median and 1.4826 · MAD of the positive air voxels) exceeds
  10, opened with a 6-connected element so single noise spikes do not count; ghosts, wrap-around
  and motion streaks light up the air;
- ``ghost_ratio`` (MRIQC ``gsr`` for EPI, Giannelli 2010): μ over the ghost region — the
  foreground shifted by N/2 along the phase-encoding axis, within the air (so neither the body
  nor its 2-voxel rim: a body that fills the field of view along the phase axis would otherwise
  measure its own blurred edge) — divided by μ_fg; computed only when the phase-encoding axis is
  known.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

from mrifoundry.tasks.curation.quality.masks import Masks, masks_of

__all__ = ["IQM_NAMES", "iqms"]

IQM_NAMES = ("snr", "snr_dietrich", "cnr", "cjv", "efc", "fber", "qi1", "bright2max", "blank_slices",
             "saturated_fraction", "slice_jump", "ghost_ratio")
_NAN = float("nan")


def _mean_sd(x: np.ndarray) -> tuple[float, float]:
    return (float(x.mean()), float(x.std())) if x.size else (_NAN, _NAN)


def snr(fg: np.ndarray) -> float:
    n = fg.size
    if n < 2:
        return _NAN
    mu, sd = _mean_sd(fg)
    return mu / (sd * math.sqrt(n / (n - 1))) if sd > 0 else _NAN


def snr_dietrich(fg: np.ndarray, air: np.ndarray) -> float:
    if not fg.size or not air.size:
        return _NAN
    mad = float(np.median(np.abs(air - np.median(air))))
    sigma = 1.4826 * mad if mad > 0 else float(air.std())
    return float(fg.mean()) / (sigma * math.sqrt(2.0 / (4.0 - math.pi))) if sigma > 0 else _NAN


def efc(v: np.ndarray) -> float:
    x = np.abs(v.ravel())
    n = x.size
    b_max = math.sqrt(float(np.sum(x ** 2)))
    if n < 2 or b_max == 0:
        return _NAN
    efc_max = n * (1.0 / math.sqrt(n)) * math.log(1.0 / math.sqrt(n))
    return float(np.sum((x / b_max) * np.log((x + 1e-16) / b_max)) / efc_max)


def qi1(v: np.ndarray, air: np.ndarray, zscore: float = 10.0) -> float:
    """Share of air voxels in the artefact mask (module docstring); NaN with under 100 positive air voxels."""
    bg = v[air]
    pos = bg[bg > 0]
    if pos.size < 100 or not air.any():
        return _NAN
    loc = float(np.median(pos))
    spread = 1.4826 * float(np.median(np.abs(pos - loc)))
    if spread <= 0:
        return _NAN
    art = np.zeros(v.shape, bool)
    art[air] = (bg - loc) / spread > zscore
    art = ndi.binary_opening(art, structure=ndi.generate_binary_structure(3, 1)) & air
    return float(art.sum() / air.sum())


def ghost_ratio(v: np.ndarray, fg: np.ndarray, pe_axis: int, air: np.ndarray | None = None) -> float:
    """μ of the ghost region (the foreground moved by N/2 along ``pe_axis``, in the air) / μ_fg."""
    ghost = np.roll(fg, v.shape[pe_axis] // 2, axis=pe_axis) & (~fg if air is None else air)
    if not ghost.any() or not fg.any():
        return _NAN
    return float(v[ghost].mean() / v[fg].mean())


def _slab_checks(v: np.ndarray, fg: np.ndarray, axis: int) -> tuple[float, float]:
    """(share of blank slices, largest relative jump) over the slices between the first and the
    last that hold foreground, each slice measured by its mean over the foreground's footprint."""
    fgs = np.moveaxis(fg, axis, 0)
    present = np.flatnonzero(fgs.reshape(fgs.shape[0], -1).any(axis=1))
    if not present.size:
        return _NAN, _NAN
    lo, hi = int(present[0]), int(present[-1])
    footprint = fgs.any(axis=0)
    means = np.moveaxis(v, axis, 0)[lo:hi + 1][:, footprint].mean(axis=1)
    ref = float(np.median(means))
    if ref <= 0:
        return _NAN, _NAN
    jump = float(np.abs(np.diff(means)).max() / ref) if means.size > 1 else 0.0
    return float(np.mean(means < 0.1 * ref)), jump


def iqms(volume: np.ndarray, *, axis: int = 2, pe_axis: int | None = None, masks: Masks | None = None) -> dict:
    """Every metric of :data:`IQM_NAMES` for one 3D volume (module docstring); NaN where undefined."""
    v = np.asarray(volume, dtype=np.float64)
    m = masks or masks_of(v)
    fg, air = v[m.foreground], v[m.air]
    mid, bright = v[m.classes == 2], v[m.classes == 3]
    (mu_m, sd_m), (mu_b, sd_b) = _mean_sd(mid), _mean_sd(bright)
    sd_air = float(air.std()) if air.size else _NAN
    contrast = abs(mu_b - mu_m)
    fg_energy = float(np.median(np.abs(fg) ** 2)) if fg.size else _NAN
    air_energy = float(np.median(np.abs(air) ** 2)) if air.size else _NAN
    blank, jump = _slab_checks(v, m.foreground, axis)
    return {
        "snr": snr(fg),
        "snr_dietrich": snr_dietrich(fg, air),
        "cnr": contrast / math.sqrt(sd_air ** 2 + sd_m ** 2 + sd_b ** 2) if contrast > 0 else _NAN,
        "cjv": (sd_b + sd_m) / contrast if contrast > 0 else _NAN,
        "efc": efc(v),
        "qi1": qi1(v, m.air),
        "fber": fg_energy / air_energy if air_energy and air_energy > 0 else _NAN,
        "bright2max": float(np.median(bright) / np.percentile(fg, 99.95)) if bright.size and fg.size else _NAN,
        "blank_slices": blank,
        "saturated_fraction": float(np.mean(fg >= v.max())) if fg.size else _NAN,
        "slice_jump": jump,
        "ghost_ratio": ghost_ratio(v, m.foreground, pe_axis, m.air) if pe_axis is not None else _NAN,
    }
