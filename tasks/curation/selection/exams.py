"""Which exams a run curates: report filtering + sampling, or every study of the archive.

Writes the restricted tables (reports with decisions, the selection mapping exam ids to
accession numbers) and returns only opaque exam ids and counts.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from mrifoundry.catalog.schema import REPORTS, to_arrow
from mrifoundry.catalog.store import write_parquet_atomic
from mrifoundry import ids
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation.archive import open_archive, walk_limits
from mrifoundry.tasks.curation.archive.folder_index import archive_sources, unattributed_files
from mrifoundry.tasks.curation.selection.reports import ReportRules, filter_reports
from mrifoundry.tasks.curation.selection.sampling import sample_exams
from mrifoundry.tasks.curation.workspace import Workspace

SELECTION_SCHEMA = pa.schema([
    ("exam_id", pa.string()), ("study_key", pa.string()), ("protocol", pa.string()),
    ("body_part", pa.string()), ("source", pa.string()),
])


@dataclass
class Selection:
    exam_ids: list[str]
    counts: dict[str, int] = field(default_factory=dict)     # safe to log: no PHI
    space: tuple[int, int] = (0, 0)    # (bytes this run may write, bytes free under OUT): a pre-flight estimate

#: research-zone bytes per archive byte: de-identified copy (≈1) + PNG slices + NIfTI (≈0.5 together)
OUTPUT_PER_INPUT = 1.6


def select_exams(ws: Workspace, params: CurateParams) -> Selection:
    """Build the run's exam list and persist the restricted selection table.

    Raises:
        FileNotFoundError: the report export does not exist.
    """
    archive = open_archive(params.archive, ws.restricted, workers=params.workers,
                           limits=walk_limits(params))
    counts: dict[str, int] = {}
    if params.reports:
        rules = ReportRules.load(Path(params.rules) if params.rules else None, params.date_start, params.date_end)
        result = filter_reports(Path(params.reports), rules)
        counts.update({f"reports_{k}": v for k, v in sorted(result.counts.items())})
        counts["reports_total"] = len(result.rows)
        chosen = sample_exams(result.kept, params.n_per_protocol, params.seed)
        chosen_acc = {r["accession_number"] for r in chosen}
        for r in result.rows:
            r["exam_id"] = ids.exam_id(r["accession_number"], ws.salt) if r["accession_number"] else None
            r["sampled"] = r["accession_number"] in chosen_acc
        write_parquet_atomic(to_arrow(REPORTS, result.rows), ws.restricted / "reports" / "reports.parquet")
        selection = [dict(exam_id=ids.exam_id(r["accession_number"], ws.salt), study_key=r["accession_number"],
                          protocol=r["protocol"], body_part=r["body_part"], source="report") for r in chosen]
        counts["protocols_sampled"] = len({r["protocol"] for r in chosen})
    else:
        selection = [dict(exam_id=ids.exam_id(s.key, ws.salt), study_key=s.key, protocol=None, body_part=None,
                          source="archive") for s in archive.studies()]
    # index the archive now, once, so per-exam tasks only read the index
    getattr(archive, "ensure_index", lambda: None)()
    counts["files_unattributed"] = _ledger_unattributed(ws, getattr(archive, "index_path", None))
    counts["exams_selected"] = len(selection)
    merged = _merge_selection(ws.selection_path, selection)
    write_parquet_atomic(pa.Table.from_pylist(merged, schema=SELECTION_SCHEMA), ws.selection_path)
    exam_ids = [s["exam_id"] for s in selection]
    if params.rerun == "failed":  # exams with a failed item, or not finished (never started, cut short)
        todo = ws.ledger.unfinished_exams(exam_ids)
        exam_ids = [e for e in exam_ids if e in todo]
        counts["exams_with_failures"] = len(exam_ids)
    return Selection(exam_ids, counts, _space_needed(ws, archive, selection, set(exam_ids)))


def _space_needed(ws: Workspace, archive, selection: list[dict], todo: set[str]) -> tuple[int, int]:
    """Estimated output bytes of the exams to do (archive file sizes × OUTPUT_PER_INPUT; archives
    that know their sizes only, i.e. folders) and the free bytes under OUT."""
    free = shutil.disk_usage(ws.out).free
    total_size = getattr(archive, "total_size", None)
    if total_size is None:
        return 0, free
    done = ws.ledger.exams_with("catalog", "done")
    keys = [s["study_key"] for s in selection if s["exam_id"] in todo and s["exam_id"] not in done]
    return int(total_size(keys) * OUTPUT_PER_INPUT), free


def _ledger_unattributed(ws: Workspace, index_path: Path | None) -> int:
    """One ledger row per archive entry that no study claims: files that are not DICOM and alone
    in their folder (``unattributed_file``), and what the walk did not index (special files, links
    out of the archive, unreadable or refused containers — and a ``done`` row per expanded
    container). Paths go to ``restricted/unattributed_files.csv`` only; the ledger holds opaque ids.
    Returns the number of entries rejected."""
    if index_path is None or not Path(index_path).exists():
        return 0
    entries = [dict(path=p, kind="file", status="rejected", reason="unattributed_file",
                    message="not DICOM, and no study in its folder") for p in unattributed_files(Path(index_path))]
    entries += [dict(r, message=r["message"] or "") for r in archive_sources(Path(index_path))]
    lines = []
    for e in entries:
        item = f"{e['kind']}:" + ids.opaque_id(e["kind"], e["path"], ws.salt)
        lines.append(f"{item},{e['reason'] or 'expanded'},{e['path']}")
        ws.ledger.record(item, "retrieve", e["status"], exam_id="archive", item_kind=e["kind"],
                         reason=e["reason"], message=e["message"])
    listing = ws.restricted / "unattributed_files.csv"
    listing.write_text("item_id,reason,path\n" + "".join(r + "\n" for r in lines))
    return sum(e["status"] == "rejected" for e in entries)


def _merge_selection(path: Path, new: list[dict]) -> list[dict]:
    """Earlier runs' selections stay (the catalog grows); this run's rows win."""
    rows = {r["exam_id"]: r for r in (pq.read_table(path).to_pylist() if path.exists() else [])}
    rows.update({r["exam_id"]: r for r in new})
    return sorted(rows.values(), key=lambda r: r["exam_id"])


_CACHE: dict[tuple[str, float], dict[str, dict]] = {}


def lookup(ws: Workspace, exam_id: str) -> dict:
    """The restricted selection row of an exam (study key = accession number or uid:…).

    Raises:
        KeyError: the exam is not in the selection (run the selection step first).
    """
    path = ws.selection_path
    key = (str(path), path.stat().st_mtime)
    if key not in _CACHE:
        _CACHE.clear()
        _CACHE[key] = {r["exam_id"]: r for r in pq.read_table(path).to_pylist()}
    return _CACHE[key][exam_id]
