"""What an ingest run did, for a person: counts per reason, sequences, and a montage of mid slices."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

from mrifoundry.catalog.reasons import describe
from mrifoundry.catalog.views import connect
from mrifoundry.tasks.curation.qc import save_png_atomic

__all__ = ["ingest_montage", "ingest_summary"]

TILE = 128


def _mid_slice(path: str) -> np.ndarray:
    """Middle axial slice of a RAS volume, 0..255 by the 0.5–99.5 percentiles, anterior up."""
    data = np.asarray(nib.load(path).dataobj, dtype=np.float32)
    if data.ndim == 4:
        data = data[..., data.shape[3] // 2]
    sl = np.rot90(data[:, :, data.shape[2] // 2])
    lo, hi = np.percentile(sl, [0.5, 99.5]) if sl.size else (0.0, 1.0)
    return (np.clip((sl - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def ingest_montage(research: Path, dataset: str, out_path: Path, n: int = 16) -> Path | None:
    """Tiles of the first ``n`` converted series of ``dataset``, labelled by sequence and opaque id."""
    con = connect(research)
    try:
        rows = con.execute("SELECT r.series_id, r.sequence_type, r.nifti_file FROM series r JOIN exams e USING (exam_id) "
                           "WHERE e.dataset = ? AND r.status = 'ok' ORDER BY r.sequence_type, r.series_id LIMIT ?",
                           [dataset, n]).fetchall()
    finally:
        con.close()
    if not rows:
        return None
    cols = min(len(rows), 8)
    canvas = Image.new("L", (cols * TILE, -(-len(rows) // cols) * (TILE + 14)), 0)
    draw = ImageDraw.Draw(canvas)
    for k, (sid, seq, path) in enumerate(rows):
        im = Image.fromarray(_mid_slice(path))
        im.thumbnail((TILE, TILE))
        x, y = (k % cols) * TILE, (k // cols) * (TILE + 14)
        canvas.paste(im, (x + (TILE - im.width) // 2, y + (TILE - im.height) // 2))
        draw.text((x + 2, y + TILE), f"{seq or '?'} {sid[:7]}", fill=200)
    return save_png_atomic(canvas, out_path)


def ingest_summary(research: Path, dataset: str, run: dict) -> tuple[str, Path | None]:
    """Markdown of the run (``run`` = ingest_collection's counts) and the catalog state of ``dataset``."""
    con = connect(research)
    try:
        reasons = con.execute(
            "SELECT s.status, s.reason, COUNT(*) FROM stage_results s WHERE s.stage = 'ingest' AND s.item_id IN "
            "(SELECT series_id FROM series JOIN exams USING (exam_id) WHERE dataset = ?) OR (s.stage = 'ingest' "
            "AND s.reason = 'not_bids_named') GROUP BY 1, 2 ORDER BY 1, 3 DESC", [dataset]).fetchall()
        seqs = con.execute("SELECT r.sequence_type, COUNT(*), COUNT(DISTINCT e.patient_id) FROM series r "
                           "JOIN exams e USING (exam_id) WHERE e.dataset = ? AND r.status = 'ok' GROUP BY 1 ORDER BY 2 DESC",
                           [dataset]).fetchall()
    finally:
        con.close()
    lines = [f"# Ingest of `{dataset}`", "", "| this run | n |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in run.get("outcomes", {}).items()]
    lines += ["", "## Files in the ledger", "", "| status | reason | n | meaning |", "|---|---|---|---|"]
    lines += [f"| {s} | `{r}` | {n} | {describe(r)} |" if r else f"| {s} | | {n} | |" for s, r, n in reasons]
    lines += ["", "## Converted series", "", "| sequence | series | subjects |", "|---|---|---|"]
    lines += [f"| {s} | {n} | {p} |" for s, n, p in seqs]
    montage = ingest_montage(research, dataset, research / "qc" / f"ingest-{dataset}.png")
    if montage:
        lines += ["", f"Mid-slice montage: [{montage.resolve()}](file://{montage.resolve()})"]
    return "\n".join(lines) + "\n", montage
