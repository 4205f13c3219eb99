"""Ingest a NIfTI or BIDS collection into the research catalog, resumably (stage ``ingest``).

Each image file is one item of the stage ledger (``stage = 'ingest'``, item = its series id):
checked, de-duplicated by voxel digest against every series already in the catalog, conformed
(RAS, 1 mm) to ``research/nifti/<exam_id>/<series_id>.nii.gz`` and described by one ``series`` row;
each (subject, session) is one ``exams`` row. Rows go through the same per-exam parts as curation,
so a re-run replaces, never duplicates, and files that are done or rejected are not read again
unless they changed (size or mtime). Ids are salted: ``exam`` of (dataset, sub, ses),
``patient`` of (dataset, sub), ``series`` of (dataset, relative path); the raw labels, paths and
sidecar file names stay in ``restricted/ingest/<dataset>/sources.parquet``, which the PHI audit
reads to know what must not leak.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pyarrow as pa

from mrifoundry.catalog.reasons import INGEST_STAGE
from mrifoundry.catalog.schema import SERIES
from mrifoundry.catalog.store import table_file, write_exam_parts, write_parquet_atomic
from mrifoundry import code_version
from mrifoundry.errors import CurationError, RejectedItem, is_disk_full
from mrifoundry.ids import opaque_id, patient_id, subject_key
from mrifoundry.params import IngestParams
from mrifoundry.tasks.curation.convert.nifti import NiftiConfig
from mrifoundry.tasks.ingest.collection.sidecar import bids_entities_json, series_metadata
from mrifoundry.tasks.ingest.collection.sources import Source, find_sources
from mrifoundry.tasks.ingest.collection.volume import CONVERTER, check_nifti, conform
from mrifoundry.tasks.curation.quality.series import series_quality
from mrifoundry.tasks.curation.workspace import Workspace

__all__ = ["dataset_of", "ingest_collection", "layout_of"]

log = logging.getLogger(__name__)
_DATASET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def layout_of(p: IngestParams) -> tuple[str, Path]:
    """(``bids`` | ``nifti``, the folder) of the parameters."""
    return ("bids", Path(p.bids)) if p.bids else ("nifti", Path(p.nifti))


def dataset_of(p: IngestParams) -> str:
    """The collection's name: ``p.dataset``, else the folder's name.

    Raises:
        ValueError: a name outside the safe alphabet (it is stored and used as a folder name)."""
    dataset = p.dataset or layout_of(p)[1].resolve().name
    if not _DATASET.match(dataset):
        raise ValueError(f"dataset {dataset!r}: letters, digits, '.', '_' or '-' (it is stored as is)")
    return dataset


@dataclass
class _Item:
    src: Source
    exam_id: str
    series_id: str
    patient_id: str
    subject_key: str


def _items(sources: list[Source], dataset: str, salt: str) -> list[_Item]:
    out = []
    for s in sources:
        out.append(_Item(s, "e" + opaque_id("exam", f"{dataset}\0{s.subject}\0{s.session}", salt, 15),
                         "s" + opaque_id("series", f"{dataset}\0{s.rel}", salt, 15),
                         patient_id(f"{dataset}\0{s.subject}", salt), subject_key(s.subject, salt)))
    return out


def _signature(path: Path) -> list[int]:
    try:
        st = path.stat()
    except OSError:   # a broken link (annexed content not fetched): the link's own times
        st = path.lstat()
    return [int(st.st_size), int(st.st_mtime_ns)]


def _write_manifest(ws: Workspace, dataset: str, items: list[_Item]) -> Path:
    """Restricted: which source file (and raw labels, sidecars) each opaque id stands for."""
    path = ws.restricted / "ingest" / dataset / "sources.parquet"
    rows = {"series_id": [i.series_id for i in items], "exam_id": [i.exam_id for i in items],
            "source_path": [str(i.src.path.resolve()) for i in items], "rel": [i.src.rel for i in items],
            "subject": [i.src.subject for i in items], "session": [i.src.session for i in items],
            "sidecar_files": [[str(p.resolve()) for p in i.src.sidecar_files] for i in items]}
    write_parquet_atomic(pa.table(rows), path)
    return path


def _known_digests(ws: Workspace) -> dict[str, str]:
    """content_sha256 → series_id of every converted series in the catalog."""
    path = table_file(ws.research, SERIES)
    if not path.exists():
        return {}
    import pyarrow.parquet as pq
    t = pq.read_table(path, columns=None)
    if "content_sha256" not in t.column_names:
        return {}
    out = {}
    for sid, status, digest in zip(t["series_id"].to_pylist(), t["status"].to_pylist(),
                                   t["content_sha256"].to_pylist()):
        if digest and status == "ok":
            out.setdefault(digest, sid)
    return out


def _series_row(item: _Item, p: IngestParams, ws: Workspace, vol, written: nib.Nifti1Image, path: Path) -> dict:
    s = item.src
    meta = series_metadata(s.sidecar, s.entities, vol.image.affine, vol.n_timepoints,
                           extra_phi=[s.subject, s.session])
    zooms = [float(z) for z in vol.image.header.get_zooms()[:3]]
    return dict(series_id=item.series_id, exam_id=item.exam_id, image_set="", status="ok", reason=None,
                **{k: v for k, v in meta.items() if k != "slice_thickness"},
                rows=vol.source_shape[1], cols=vol.source_shape[0], pixel_spacing_row=zooms[1],
                pixel_spacing_col=zooms[0], slice_thickness=meta["slice_thickness"] or zooms[2],
                slice_spacing=zooms[2], n_slices=vol.source_shape[2], n_timepoints=vol.n_timepoints,
                nifti_path=ws.rel(path), nifti_shape="x".join(map(str, written.shape)),
                nifti_zooms="x".join(f"{z:g}" for z in written.header.get_zooms()[:3]),
                nifti_timepoint=vol.timepoint, converter=CONVERTER, converter_version=nib.__version__,
                conversion_params=json.dumps({"voxel_size_mm": p.voxel_size_mm, "shape": p.nifti_shape,
                                              "interpolation_order": 1, "reorientation": "nibabel.as_closest_canonical",
                                              "resampling": "nibabel.processing", "layout": layout_of(p)[0],
                                              "sidecar_error": bool(s.sidecar_error)}, sort_keys=True),
                content_sha256=vol.digest, bids_entities=bids_entities_json(s.entities))


class _Digests:
    """content digest → series id, shared by the worker threads: the first to claim a digest keeps it."""

    def __init__(self, known: dict[str, str]):
        self.known, self.lock = known, threading.Lock()

    def claim(self, digest: str, series_id: str) -> str:
        with self.lock:
            return self.known.setdefault(digest, series_id)

    def release(self, digest: str, series_id: str) -> None:
        with self.lock:
            if self.known.get(digest) == series_id:
                del self.known[digest]


def _ingest_one(item: _Item, p: IngestParams, ws: Workspace, digests: _Digests) -> dict:
    """Check, de-duplicate and conform one file; returns its series row (status ok or rejected).

    Raises:
        CurationError: a failure to retry (``ingest_error``, ``disk_full``).
    """
    vol = check_nifti(item.src.path, item.series_id)   # its default: 8 voxels per axis at least
    other = digests.claim(vol.digest, item.series_id)
    if other != item.series_id:
        raise RejectedItem(item.series_id, "duplicate_content", f"same voxels as series {other}")
    path = ws.nifti_path(item.exam_id, item.series_id)
    cfg = NiftiConfig(voxel_size_mm=p.voxel_size_mm, shape=p.nifti_shape)
    try:
        written = conform(vol, path, cfg, item.series_id)
    except Exception:
        digests.release(vol.digest, item.series_id)   # a failed file must not block its duplicate later
        raise
    row = _series_row(item, p, ws, vol, written, path)
    row["_quality"] = _quality(ws, item, row, written)
    return row


def _quality(ws: Workspace, item: _Item, row: dict, written: nib.Nifti1Image) -> dict | None:
    """The series_quality record of an ingested volume (as curation's convert stage makes it);
    None, with a warning, when it cannot be computed: the volume is ingested all the same."""
    try:
        q = series_quality(np.asarray(written.dataobj), written.header.get_zooms(), row.get("orientation"),
                           row.get("phase_encoding_direction"), thumb_path=ws.thumb_path(item.series_id))
    except Exception as e:  # noqa: BLE001 - metrics never cost the ingest
        if is_disk_full(e):
            raise
        log.warning("ingest %s: quality metrics failed (%s)", item.series_id, type(e).__name__)
        return None
    q["thumb_path"] = ws.rel(q["thumb_path"])
    return q


def _one_file(it: _Item, prev: dict | None, p: IngestParams, ws: Workspace, digests: _Digests) -> tuple[str, dict | None]:
    """(outcome, row) of one file: reused from the last run, or ingested now with its ledger row."""
    sig = _signature(it.src.path)
    status = ws.ledger.status(it.series_id, INGEST_STAGE)
    if p.rerun == "failed" and status != "failed":    # only what failed; new and changed files wait
        return "skipped", prev["row"] if prev else None
    if (p.rerun == "missing" and prev and prev["signature"] == sig and status in ("done", "rejected")
            and (status == "rejected" or (ws.research / prev["row"]["nifti_path"]).exists())):
        return "skipped", prev["row"]
    started, kw = time.time(), dict(exam_id=it.exam_id, item_kind="series")
    try:
        row = _ingest_one(it, p, ws, digests)
        note = "sidecar unreadable, metadata from the file only" if it.src.sidecar_error else None
        ws.ledger.record(it.series_id, INGEST_STAGE, "done", started=started, message=note,
                         outputs=[row["nifti_path"]], **kw)
        return "done", row
    except RejectedItem as e:
        ws.ledger.record(it.series_id, INGEST_STAGE, "rejected", reason=e.reason, message=e.message, started=started,
                         **kw)
        return "rejected", dict(series_id=it.series_id, exam_id=it.exam_id, image_set="", status="rejected",
                                reason=e.reason, bids_entities=bids_entities_json(it.src.entities))
    except Exception as e:  # noqa: BLE001 - one bad file must not stop the collection
        reason = e.reason if isinstance(e, CurationError) else "ingest_error"
        msg = e.message if isinstance(e, CurationError) else f"{type(e).__name__}"
        ws.ledger.record(it.series_id, INGEST_STAGE, "failed", reason=reason, message=msg, started=started, **kw)
        log.warning("ingest %s: %s (%s)", it.series_id, reason, msg)
        return "failed", None


def _exam_row(item: _Item, p: IngestParams, rows: list[dict], n_sources: int) -> dict:
    ok = [r for r in rows if r["status"] == "ok"]
    parts = Counter(r["body_part"] for r in ok if r.get("body_part"))
    return dict(exam_id=item.exam_id, patient_id=item.patient_id, protocol=None,
                body_part=parts.most_common(1)[0][0] if parts else p.body_part, study_date=None, modality="MR",
                n_series=n_sources, n_series_ok=len(ok), n_slices=0, source=layout_of(p)[0], dataset=p.dataset,
                subject_key=item.subject_key, curated_at=dt.datetime.now(dt.timezone.utc),
                code_version=code_version())


def ingest_collection(out: Path, p: IngestParams, *, run_id: str = "cli",
                      progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Ingest every image of ``p.bids`` or ``p.nifti`` into ``out``'s catalog parts (call
    finalize_catalog after). ``p.rerun``: missing = new, changed and failed files; failed =
    only the failed ones; all = every file.

    Returns:
        {"files", "outcomes": {done, rejected, failed, skipped}, "exams", "unnamed"}: counts only.
    Raises:
        FileNotFoundError: ``root`` is not a folder / not a BIDS dataset.
        ValueError: bad parameters.
    """
    layout, root = layout_of(p)
    p = p.model_copy(update={"dataset": dataset_of(p)})
    ws = Workspace(Path(out), run_id)
    sources, unnamed = find_sources(root, layout)
    items = _items(sources, p.dataset, ws.salt)
    _write_manifest(ws, p.dataset, items)
    known = _known_digests(ws)
    by_exam: dict[str, list[_Item]] = {}
    for it in items:
        by_exam.setdefault(it.exam_id, []).append(it)
    outcomes: Counter = Counter()
    digests, lock = _Digests(known), threading.Lock()
    t0, n_done = time.time(), 0

    def exam(exam_id: str, group: list[_Item]) -> None:
        nonlocal n_done
        state_path = ws.artifact(exam_id, "ingest")
        state = json.loads(state_path.read_text()) if state_path.exists() else {}
        if p.rerun == "failed" and not any(ws.ledger.status(it.series_id, INGEST_STAGE) == "failed"
                                           for it in group):
            with lock:     # nothing to redo: the exam's parts and state stay as they are
                outcomes["skipped"] += len(group)
                n_done += len(group)
            return
        rows, new_state = [], {}
        for it in group:
            outcome, row = _one_file(it, state.get(it.series_id), p, ws, digests)
            if row is not None:
                rows.append(row)
                new_state[it.series_id] = state[it.series_id] if outcome == "skipped" else \
                    {"signature": _signature(it.src.path), "row": row}
            with lock:
                outcomes[outcome] += 1
                n_done += 1
                if progress:
                    progress(n_done, len(items), n_done / max(time.time() - t0, 1e-6))
        ws.write_artifact(exam_id, "ingest", new_state)
        quality = [dict(series_id=r["series_id"], exam_id=exam_id, **r["_quality"]) for r in rows if r.get("_quality")]
        rows = [{k: v for k, v in r.items() if k != "_quality"} for r in rows]   # the state keeps it for reuse
        write_exam_parts(ws.research, exam_id, {"exams": [_exam_row(group[0], p, rows, len(group))],
                                                "series": rows, "series_quality": quality})

    if p.workers <= 1:
        for exam_id, group in by_exam.items():
            exam(exam_id, group)
    else:   # nibabel's gzip and scipy's resampling release the GIL for most of their work
        with ThreadPoolExecutor(p.workers) as pool:
            for f in [pool.submit(exam, e, g) for e, g in by_exam.items()]:
                f.result()
    for rel in unnamed:   # recorded, so a user sees why a file of the folder is not in the catalog
        sid = "s" + opaque_id("series", f"{p.dataset}\0{rel}", ws.salt, 15)
        ws.ledger.record(sid, INGEST_STAGE, "rejected", exam_id="e" + opaque_id("exam", f"{p.dataset}\0", ws.salt, 15),
                         item_kind="series", reason="not_bids_named", message="not a BIDS image path")
        outcomes["rejected"] += 1
    return {"dataset": p.dataset, "files": len(items) + len(unnamed), "exams": len(by_exam), "outcomes": dict(outcomes),
            "unnamed": len(unnamed)}
