"""Training slices from the catalog: a SQL query → PNG paths → normalised tensors."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from mrifoundry.catalog.views import connect

#: What the slice recipes train on when the caller names no query.
DEFAULT_QUERY = "SELECT png_file FROM training_slices"


_SLICE_COLUMNS = ("slice_id", "series_id", "exam_id", "png_file")


def query_slices(research: Path, sql: str) -> list[dict]:
    """The catalog slices ``sql`` names, by ``slice_id`` or by ``png_file`` (one convention
    for training, features, probing and FRD).

    Each row has the slice's slice_id, series_id, exam_id and png_file, plus the query's
    other columns (label, patient_id …). A ``png_file`` outside the catalog (a contrast
    stack, another folder's PNG) is kept with the ids None. Rows are ordered by ``png_file``
    so a run's epoch order depends only on the seed, not on the catalog's file order.

    Raises:
        ValueError: the query returns neither slice_id nor png_file.
    """
    con = connect(research)
    try:
        cols = [d[0] for d in con.execute(f"SELECT * FROM ({sql}) LIMIT 0").description]
        key = next((k for k in ("slice_id", "png_file") if k in cols), None)
        if key is None:
            raise ValueError(f"the query must name slices by slice_id or png_file (e.g. {DEFAULT_QUERY})")
        extra = [c for c in cols if c not in _SLICE_COLUMNS]
        picked = ", ".join([f"{'q' if c == key else 't'}.{c}" for c in _SLICE_COLUMNS] + [f'q."{c}"' for c in extra])
        cur = con.execute(f"SELECT {picked} FROM ({sql}) q LEFT JOIN slices t ON t.{key} = q.{key}")
        names = list(_SLICE_COLUMNS) + extra
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()
    if key == "slice_id" and any(r["png_file"] is None for r in rows):
        raise ValueError("the query returns slice_ids that are not in the catalog's slices table")
    rows.sort(key=lambda r: r["png_file"])
    return rows


def load_slice(path: str | Path, window: tuple[float, float] | None = None) -> torch.Tensor:
    """PNG → float ``[C, H, W]`` in [0, 1], min-max normalised per slice and channel
    (MRI-CORE: slice-wise beat volume-wise). ``window`` = (lo, hi): the slice's own range within
    its series' range (:func:`volume_windows`), so the result is volume-wise min-max instead.

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
    if window is not None:
        a = (window[0] + a * (window[1] - window[0])).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a))


def volume_windows(research: Path, slice_ids: list[str | None]) -> list[tuple[float, float]]:
    """Per slice, (lo, hi) = its stored value range within its series' (and time point's) range,
    both in [0, 1]: the curated PNG spans the slice's own range, so ``lo + png01 · (hi − lo)`` is
    the pixel min-max normalised over the whole volume. A slice outside the catalog (None) keeps (0, 1)."""
    con = connect(research)
    try:
        got = dict((r[0], (r[1], r[2])) for r in con.execute(
            "SELECT s.slice_id, (s.min_value - g.lo) / nullif(g.hi - g.lo, 0), "
            "(s.max_value - g.lo) / nullif(g.hi - g.lo, 0) FROM slices s JOIN (SELECT series_id, temporal_index, "
            "min(min_value) AS lo, max(max_value) AS hi FROM slices GROUP BY 1, 2) g USING (series_id, temporal_index)"
        ).fetchall())
    finally:
        con.close()
    return [tuple(0.0 if v is None else float(v) for v in got[s]) if s in got else (0.0, 1.0) for s in slice_ids]


def read_slice_list(path: Path) -> tuple[list[str], list[tuple[float, float]] | None]:
    """RUN/slices.txt: one PNG a line, or ``png<TAB>lo<TAB>hi`` with a volume-wise window."""
    lines = [ln.split("\t") for ln in Path(path).read_text().splitlines() if ln]
    windows = [(float(f[1]), float(f[2])) for f in lines] if lines and len(lines[0]) == 3 else None
    return [f[0] for f in lines], windows


class SliceDataset(torch.utils.data.Dataset):
    """Index → ``transform(load_slice(png))``; used with a batch sampler (tasks/data/samplers.py)."""

    def __init__(self, paths: list[str], transform: Callable[[torch.Tensor], object] | None = None,
                 windows: list[tuple[float, float]] | None = None):
        self.paths = list(paths)
        self.transform = transform
        self.windows = windows

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        img = load_slice(self.paths[i], self.windows[i] if self.windows else None)
        return self.transform(img) if self.transform else img
