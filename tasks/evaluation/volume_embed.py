"""One pooled vector per NIfTI volume from a frozen 3D encoder (probing, volume features).

A volume is read as the volume recipes read it (``load_volume``: the middle time point of
a 4D file, robust min-max to [0, 1] between the 0.5 and 99.5 percentiles), then its whole
field of view is resized to ``size``³ (trilinear where it grows, area averaging where it
shrinks) — the 3D counterpart of resizing whole slices for the slice models. Aspect ratio
is not kept: a 1 mm RAS volume of 180 × 220 × 180 voxels is scaled per axis. Sliding-window
pooling over native-resolution crops would keep the scale the encoder was trained at; it is
not built (one forward pass per volume keeps probing of thousands of series cheap).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mrifoundry.tasks.data.volume_io import load_volume

__all__ = ["embed_volumes", "volume_cube"]


def volume_cube(path: str | Path, size: int) -> torch.Tensor:
    """[1, size, size, size] float32 in [0, 1]: the whole volume, robustly scaled and resized.

    Axes shorter than ``size`` are first stretched (trilinear), then every axis is shrunk by
    area averaging — a box filter, so no aliasing and, unlike zero-padded Gaussian
    anti-aliasing, no darkened border.
    """
    data, _ = load_volume(path)
    x = torch.as_tensor(data)[None, None]
    grown = tuple(max(n, size) for n in data.shape)
    if grown != data.shape:
        x = F.interpolate(x, size=grown, mode="trilinear", align_corners=False)
    if grown != (size,) * 3:
        x = F.interpolate(x, size=(size,) * 3, mode="area")
    return x[0].clamp_(0.0, 1.0)


@torch.no_grad()
def embed_volumes(model, paths: list[str | Path], *, batch_size: int = 2,
                  on_progress: Callable[[int, int, float], None] | None = None) -> np.ndarray:
    """[N, model.embed_dim] float32: ``model.pooled`` (a ``models.zoo3d.VolumeZooModel``) of
    each volume's ``volume_cube`` at ``model.roi``."""
    out, t0 = [], time.perf_counter()
    for start in range(0, len(paths), batch_size):
        x = torch.stack([volume_cube(p, model.roi) for p in paths[start:start + batch_size]])
        out.append(model.pooled(x).float().cpu().numpy())
        if on_progress:
            done = min(start + batch_size, len(paths))
            on_progress(done, len(paths), done / max(time.perf_counter() - t0, 1e-9))
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim), np.float32)
