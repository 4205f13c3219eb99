"""Quality rows for converted series that have none: a catalog curated before the metrics existed
(a re-run skips its done exams) or ingested by an older version. A series whose metrics failed in
the convert stage (its ``<sid>/iqm`` ledger row is failed) is left to ``rerun=failed``, so the
ledger and the table never disagree.

Reads each NIfTI back from the research zone (the convert stage measures the array in memory;
here it is on disk), writes the exam's series_quality part with its existing rows kept, and
merges. Called at the end of every curation run and by ``mrifoundry review build``.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq

from mrifoundry.catalog.schema import SERIES_QUALITY
from mrifoundry.catalog.store import consolidate, table_file, write_exam_parts
from mrifoundry.catalog.views import build_research_db, connect
from mrifoundry.errors import is_disk_full
from mrifoundry.tasks.curation.quality.series import series_quality

__all__ = ["backfill_quality"]

log = logging.getLogger(__name__)

_MISSING = """
SELECT r.series_id, r.exam_id, r.nifti_file, r.orientation, r.phase_encoding_direction
FROM series r LEFT JOIN series_quality q USING (series_id)
WHERE r.status = 'ok' AND r.nifti_path IS NOT NULL AND q.series_id IS NULL
  AND r.series_id || '/iqm' NOT IN (SELECT item_id FROM stage_results WHERE item_kind = 'quality' AND status = 'failed')
ORDER BY r.exam_id, r.series_id
"""


def _measure(research: Path, row: tuple) -> dict | None:
    sid, exam, nifti, orientation, ped = row
    try:
        img = nib.load(nifti)
        q = series_quality(np.asarray(img.dataobj), img.header.get_zooms(), orientation, ped,
                           thumb_path=research / "qc" / "thumbs" / f"{sid}.png")
    except Exception as e:  # noqa: BLE001 - one unreadable volume must not stop the others
        if is_disk_full(e):
            raise
        log.warning("quality metrics of %s failed (%s)", sid, type(e).__name__)
        return None
    q["thumb_path"] = str(Path(q["thumb_path"]).relative_to(research))
    return {"series_id": sid, "exam_id": exam, **q}


def backfill_quality(research: Path, workers: int = 2, progress=None) -> dict:
    """Measure every converted series without a series_quality row; returns {"missing", "measured"}."""
    research = Path(research)
    con = connect(research)
    try:
        missing = con.execute(_MISSING).fetchall()
    finally:
        con.close()
    if not missing:
        return {"missing": 0, "measured": 0}
    with ThreadPoolExecutor(max(1, workers)) as pool:   # nibabel's gzip and NumPy release the GIL
        got = [r for r in pool.map(lambda row: _measure(research, row), missing) if r is not None]
    by_exam: dict[str, list[dict]] = defaultdict(list)
    for r in got:
        by_exam[r["exam_id"]].append(r)
    target = table_file(research, SERIES_QUALITY)
    old = pq.read_table(target, schema=SERIES_QUALITY.schema) if target.exists() else None
    for exam, rows in by_exam.items():
        # a part replaces all of its exam's rows at the merge: keep the ones already there
        kept = old.filter(old.column("exam_id").to_numpy(zero_copy_only=False) == exam).to_pylist() if old else []
        write_exam_parts(research, exam, {"series_quality": kept + rows})
    consolidate(research, SERIES_QUALITY)
    build_research_db(research)
    if progress:
        progress(f"quality metrics backfilled: {len(got)} of {len(missing)} series without them")
    return {"missing": len(missing), "measured": len(got)}
