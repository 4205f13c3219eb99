"""Foreground, air and tissue classes of a volume from its intensities alone (no atlas, any body part).

- **foreground**: voxels above Otsu's threshold of the whole volume (256-bin histogram; where the
  between-class variance is flat over an empty stretch of the histogram — zero-filled or
  synthetic air far below the body — the middle of that stretch, where skimage's
  ``threshold_otsu`` takes its lower end and lets the top of the noise in), closed (one iteration),
  holes filled in 3D, then the connected components (26-connected) of at least a tenth of the
  largest one's size (two knees, two breasts, a body cut by a blank slab stay in; specks go);
- **air**: everything farther than ``margin`` voxels from the foreground (the rim next to the body
  holds partial volume and motion blur, which would inflate the noise estimate);
- **classes**: a 3-class intensity model of the foreground by multi-Otsu thresholds — dark, middle,
  bright. On a T1w brain these are close to CSF, GM and WM (MRIQC's tissue classes); on any other
  contrast or body part they are three intensity classes, and the contrast metrics read them so.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_multiotsu

__all__ = ["Masks", "masks_of", "otsu_threshold"]


@dataclass(frozen=True)
class Masks:
    foreground: np.ndarray    # bool
    air: np.ndarray           # bool
    classes: np.ndarray       # uint8: 0 outside the foreground, 1 dark, 2 middle, 3 bright


def _main_components(mask: np.ndarray, share: float = 0.1) -> np.ndarray:
    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return mask
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = np.flatnonzero(sizes >= share * sizes.max())
    return np.isin(lab, keep)


def otsu_threshold(v: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold (voxels ``> t`` are foreground), the middle of a flat optimum (module docstring)."""
    hist, edges = np.histogram(v, bins=bins)
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centers)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    best = np.flatnonzero(between >= between.max() * (1 - 1e-12))
    return float(centers[(best[0] + best[-1]) // 2])


def masks_of(volume: np.ndarray, margin: int = 2) -> Masks:
    """The masks of a 3D volume (module docstring). A constant volume has no foreground."""
    v = np.asarray(volume, dtype=np.float64)
    if v.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {v.shape}")
    if not np.isfinite(v).all() or v.max() == v.min():
        empty = np.zeros(v.shape, bool)
        return Masks(empty, ~empty, np.zeros(v.shape, np.uint8))
    fg = v > otsu_threshold(v)
    fg = ndi.binary_closing(fg, structure=np.ones((3, 3, 3), bool), iterations=1, border_value=0) | fg
    fg = ndi.binary_fill_holes(fg)
    fg = _main_components(fg)
    air = ~ndi.binary_dilation(fg, iterations=margin) if fg.any() else np.ones(v.shape, bool)
    classes = np.zeros(v.shape, np.uint8)
    vals = v[fg]
    if vals.size >= 3 and np.unique(vals).size >= 3:
        t1, t2 = threshold_multiotsu(vals, classes=3)
        classes[fg] = 1 + (vals > t1).astype(np.uint8) + (vals > t2).astype(np.uint8)
    elif vals.size:
        classes[fg] = 3
    return Masks(fg, air, classes)
