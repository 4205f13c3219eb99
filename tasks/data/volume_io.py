"""Reading a curated NIfTI volume as the volume recipes see it: 3D, robust min-max scaled."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = ["LOAD_FORMAT", "load_volume"]

#: What ``load_volume`` returns, as a cache key part (tasks/data/volume_cache.py): change it with the code.
LOAD_FORMAT = "robust-minmax-0.5-99.5"


def load_volume(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(float32 [X, Y, Z] in [0, 1] after robust min-max, affine). 4D: the middle time point
    (the converter already wrote one; this guards other NIfTIs)."""
    from monai.transforms import ScaleIntensityRangePercentiles
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., data.shape[3] // 2]
    if data.ndim != 3:
        raise ValueError(f"{Path(path).name}: expected a 3D volume, got shape {data.shape}")
    scale = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    out = np.asarray(scale(data[None]), dtype=np.float32)[0]
    return np.nan_to_num(out, nan=0.0), img.affine
