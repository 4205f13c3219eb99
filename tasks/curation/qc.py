"""Quality-control pictures: a montage of sampled slices per body part.

People judge curation output faster by eye than from tables. The montage reads PNGs
through the catalog (research zone only) and labels tiles with opaque ids and sequence
names, never header values that could be PHI.
"""
from __future__ import annotations

from pathlib import Path

import duckdb
import numpy as np
from PIL import Image, ImageDraw

from mrifoundry.atomic import atomic_path

TILE = 128


def qc_montage(db: Path, out_path: Path, per_body_part: int = 8, seed: int = 0) -> Path | None:
    """One row of ``per_body_part`` random slices (middle slices of converted series) per body part.

    Returns the PNG path, or None when the catalog has no slices.
    """
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            """
            WITH mid AS (
              SELECT t.*, row_number() OVER (PARTITION BY t.body_part
                       ORDER BY hash(t.series_id || ?::VARCHAR)) AS k
              FROM training_slices t
              JOIN (SELECT series_id, max(slice_index) // 2 AS mid_index FROM slices GROUP BY 1) m
                ON m.series_id = t.series_id AND t.slice_index = m.mid_index AND t.temporal_index = 0)
            SELECT coalesce(body_part, 'unknown'), png_file, sequence_type, orientation
            FROM mid WHERE k <= ? ORDER BY 1, k
            """, [str(seed), per_body_part]).fetchall()
    finally:
        con.close()
    if not rows:
        return None
    parts = sorted({r[0] for r in rows})
    label_w = 110
    canvas = Image.new("L", (label_w + per_body_part * TILE, len(parts) * (TILE + 14)), 0)
    draw = ImageDraw.Draw(canvas)
    for i, part in enumerate(parts):
        y = i * (TILE + 14)
        draw.text((4, y + TILE // 2), part, fill=255)
        for j, (_, png, seq, ori) in enumerate(r for r in rows if r[0] == part):
            im = Image.open(png).convert("L")
            im.thumbnail((TILE, TILE))
            x = label_w + j * TILE
            canvas.paste(im, (x + (TILE - im.width) // 2, y + (TILE - im.height) // 2))
            draw.text((x + 2, y + TILE), f"{seq or '?'} {(ori or '?')[:3]}", fill=200)
    return save_png_atomic(canvas, out_path)


def save_png_atomic(image: Image.Image, out_path: Path) -> Path:
    """Write a picture through a temp file and a rename (no half-written PNG for a viewer)."""
    with atomic_path(out_path) as tmp:
        image.save(tmp, format="PNG")
    return out_path


def montage_is_informative(path: Path) -> bool:
    """A montage that is not blank (used by tests and the run summary)."""
    a = np.asarray(Image.open(path))
    return a.std() > 5
