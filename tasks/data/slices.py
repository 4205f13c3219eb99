"""Training slices from the catalog: a SQL query → PNG paths → normalised tensors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from catalog.views import query_dicts

#: What the slice recipes train on when the caller names no query.
DEFAULT_QUERY = "SELECT png_file FROM training_slices"


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
    """PNG → float ``[C, H, W]`` in [0, 1], min-max normalised per slice and channel
    (MRI-CORE: slice-wise beat volume-wise).

    Grey PNGs (curated slices) give ``C = 1``; RGB(A) PNGs — contrast stacks from
    tasks/data/contrast_stacks.py — give ``C = 3`` (alpha dropped), each channel scaled on its own
    so one contrast's range never rescales another. A constant channel (e.g. a zero-filled
    missing contrast) becomes all 0. Curated PNGs already span 0..255; others get the same scaling.
    """
    with Image.open(path) as im:
        rgb = im.mode in ("RGB", "RGBA")
        a = np.asarray(im.convert("RGB" if rgb else "L"), dtype=np.float32)
    a = a.transpose(2, 0, 1) if rgb else a[None]
    lo, hi = a.min(axis=(1, 2), keepdims=True), a.max(axis=(1, 2), keepdims=True)
    span = hi - lo
    a = np.where(span > 0, (a - lo) / np.where(span > 0, span, 1.0), 0.0).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a))


class SliceDataset(torch.utils.data.Dataset):
    """Index → ``transform(load_slice(png))``; used with a batch sampler (tasks/data/samplers.py)."""

    def __init__(self, paths: list[str], transform: Callable[[torch.Tensor], object] | None = None):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_slice(self.paths[i])
        return self.transform(img) if self.transform else img
