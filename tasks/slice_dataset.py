"""Training slices from the catalog: a SQL query → PNG paths → normalised tensors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from catalog.views import query_dicts


def query_slices(research: Path, sql: str) -> list[dict]:
    """Run ``sql`` on the research catalog; it must return a ``png_file`` column.

    Extra columns (slice_id, series_id, exam_id …) are kept per row. Rows are ordered by
    ``png_file`` so a run's epoch order depends only on the seed, not on the catalog's
    file order.
    """
    cols, rows = query_dicts(research, sql)
    if "png_file" not in cols:
        raise ValueError("the training query must return a png_file column (e.g. SELECT png_file FROM training_slices)")
    rows.sort(key=lambda r: r["png_file"])
    return rows


def load_slice(path: str | Path) -> torch.Tensor:
    """PNG → float [1, H, W] in [0, 1], min-max normalised per slice (MRI-CORE: slice-wise
    beat volume-wise). Curated PNGs already span 0..255; other PNGs get the same scaling."""
    with Image.open(path) as im:
        a = np.asarray(im.convert("L"), dtype=np.float32)
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    return torch.from_numpy(a)[None]


class SliceDataset(torch.utils.data.Dataset):
    """Index → ``transform(load_slice(png))``; used with a batch sampler (tasks/slice_sampler.py)."""

    def __init__(self, paths: list[str], transform: Callable[[torch.Tensor], object] | None = None):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_slice(self.paths[i])
        return self.transform(img) if self.transform else img
