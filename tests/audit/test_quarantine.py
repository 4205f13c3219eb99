"""PHI fails closed (tasks/curation/audit/quarantine.py): leaking exams leave the research zone.

A tiny archive is curated by the plain stage functions (no Prefect); identifiers are planted in one
exam's research DICOM and PNG; the audit finds them, the quarantine moves the exam's outputs to
restricted/quarantine/, drops its catalog rows, records it in the ledger and leaves a research zone
that a second audit finds clean. Running it again changes nothing."""
from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from mrifoundry.catalog.views import query_dicts
from mrifoundry.tasks.curation.audit.identifiers import collect_identifiers
from mrifoundry.tasks.curation.audit.phi_audit import PhiLeakError, audit_output
from mrifoundry.tasks.curation.audit.quarantine import quarantine_leaks, write_report
from mrifoundry.tasks.curation.workspace import Workspace

pytestmark = pytest.mark.slow   # curates a small archive (end to end without Prefect)


ARCHIVE: dict[str, Path] = {}   # the curated fixture's archive, for a re-run over a copy of its output


@pytest.fixture(scope="module")
def curated(manifest, sample, tmp_path_factory) -> Path:
    """OUT of two exams of two patients, curated by the stage functions (PNG + NIfTI)."""
    from mrifoundry.params import CurateParams
    from mrifoundry.tasks.curation.finalize import finalize_catalog
    from mrifoundry.tasks.curation.stages import curate_exam
    from mrifoundry.tasks.curation.selection.exams import select_exams
    from tests.flows.helpers import copy_exams
    clean = [e for e in manifest["exams"] if e.get("in_archive") and e.get("study_dir")
             and not any(s.get("defect") for s in e["series"])]
    picked = [clean[0], next(e for e in clean if e["patient_mrn"] != clean[0]["patient_mrn"])]
    archive, out = tmp_path_factory.mktemp("quarantine-archive"), tmp_path_factory.mktemp("quarantine-out")
    copy_exams(manifest, sample, archive, lambda e: e in picked)
    ARCHIVE["curated"] = archive
    ws = Workspace(out)
    params = CurateParams(archive=str(archive), reports=None, out=str(out), workers=1, voxel_size_mm=4.0)
    for exam_id in select_exams(ws, params).exam_ids:
        curate_exam(ws, params, exam_id)
    finalize_catalog(ws)
    return out


@pytest.fixture
def out(curated, tmp_path) -> Path:
    """A private copy of the whole output to plant leaks in."""
    dest = tmp_path / "out"
    shutil.copytree(curated, dest)
    return dest


def _exams(out: Path) -> list[str]:
    return sorted(r["exam_id"] for r in query_dicts(out / "research", "SELECT exam_id FROM exams")[1])


def _source(out: Path, exam_id: str) -> pydicom.Dataset:
    got = json.loads((out / "restricted" / "staging" / exam_id / "retrieve.json").read_text())
    return pydicom.dcmread(got["files"][0], stop_before_pixels=True)


def _audit(out: Path, **kw):
    return audit_output(out, prefect_home=out / "no-prefect", log_dirs=[], **kw)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in sorted(root.rglob("*")) if p.is_file()}


def _plant(out: Path, exam: str) -> tuple[Path, Path]:
    """The patient's name in a kept attribute of one research DICOM and in one PNG's tEXt chunk."""
    src = _source(out, exam)
    dcm = sorted((out / "research" / "dicom" / exam).rglob("*.dcm"))[0]
    ds = pydicom.dcmread(dcm)
    ds.ImageComments = f"scanned {src.PatientName}"
    ds.save_as(dcm)
    png = sorted((out / "research" / "png" / exam).rglob("*.png"))[0]
    info = PngInfo()
    info.add_text("Comment", f"{src.PatientName.given_name} {src.PatientName.family_name}")
    Image.open(png).save(png, pnginfo=info)
    return dcm, png


def test_curated_output_is_clean_to_start_with(curated):
    rep = _audit(curated)
    assert rep.ok, rep.to_markdown()
    assert len(_exams(curated)) == 2


def test_audit_in_processes_reports_what_the_serial_audit_does(out, monkeypatch):
    """workers > 1: the files are scanned in spawned processes; the report (hits, places scanned by
    kind, errors) equals the serial scan's, planted leaks and an unreadable file included."""
    from mrifoundry.tasks.curation.audit import phi_audit
    leaky, _ = _exams(out)
    dcm, png = _plant(out, leaky)
    bad = out / "research" / "work" / leaky / "broken.parquet"
    bad.write_bytes(b"PAR1 not parquet")
    serial = _audit(out)
    monkeypatch.setattr(phi_audit, "PARALLEL_MIN_FILES", 1)
    calls = []
    real = phi_audit._scan_in_processes
    monkeypatch.setattr(phi_audit, "_scan_in_processes", lambda *a: calls.append(a[-1]) or real(*a))
    parallel = _audit(out, workers=2)
    assert calls == [2]                      # it did run in processes
    assert not serial.ok and {str(dcm.relative_to(out)), str(png.relative_to(out))} <= {h.place for h in serial.hits}
    assert parallel.hits == serial.hits
    assert parallel.errors == serial.errors and serial.errors, serial.errors
    assert parallel.scanned == serial.scanned and sum(serial.scanned.values()) > 20


def test_identifiers_collected_in_processes_equal_the_serial_ones(out, monkeypatch):
    """workers > 1: the source headers are read in spawned processes, a chunk of exams each;
    phrases with their kinds, UIDs, vocabulary and unreadable sources are the serial ones."""
    from mrifoundry.tasks.curation.audit import identifiers
    serial = collect_identifiers(out)
    monkeypatch.setattr(identifiers, "CHUNK_EXAMS", 1)
    calls = []
    real = identifiers._staging_in_processes
    monkeypatch.setattr(identifiers, "_staging_in_processes", lambda *a: calls.append(len(a[0])) or real(*a))
    parallel = collect_identifiers(out, workers=2)
    assert calls == [2]
    assert parallel.phrases == serial.phrases and len(serial.phrases) > 10
    assert list(parallel._uid_set()) == list(serial._uid_set()) and serial.kinds()["uid"] > 10
    assert parallel.vocabulary == serial.vocabulary and parallel.unreadable_sources == serial.unreadable_sources


def test_leaking_exam_is_quarantined(out):
    leaky, other = _exams(out)
    dcm, png = _plant(out, leaky)
    ws = Workspace(out)
    rep = _audit(out)
    assert not rep.ok
    places = {h.place for h in rep.hits}
    assert {str(dcm.relative_to(out)), str(png.relative_to(out))} <= places
    outputs_before = {d: (out / "research" / d / leaky).exists() for d in ("dicom", "png", "nifti", "work")}
    assert all(outputs_before.values()), outputs_before

    q = quarantine_leaks(out, rep)

    # the exam's files are under restricted/quarantine/<path under research/>
    qdir = out / "restricted" / "quarantine"
    assert q.exams == [leaky] and q.already == []
    assert (qdir / dcm.relative_to(out / "research")).is_file()
    assert (qdir / png.relative_to(out / "research")).is_file()
    for d in ("dicom", "png", "nifti", "work"):
        assert (qdir / d / leaky).is_dir(), d
        assert (out / "research" / d / other).is_dir(), d           # the other exam stays
    # research/ holds no file of that exam any more
    assert [p for p in (out / "research").rglob("*") if leaky in p.parts or leaky in p.name] == []
    # the catalog views list no row of it; the other exam's rows remain
    research = out / "research"
    for table in ("exams", "series", "slices", "training_slices"):
        rows = query_dicts(research, f"SELECT exam_id, count(*) AS n FROM {table} GROUP BY 1")[1]
        assert {r["exam_id"] for r in rows} == {other}, table
    assert q.rows_dropped["exams"] == 1 and q.rows_dropped["series"] > 0 and q.rows_dropped["slices"] > 0
    kept = pq.read_table(qdir / "catalog" / "slices" / f"{leaky}.parquet")
    assert kept.num_rows == q.rows_dropped["slices"] and set(kept.column("exam_id").to_pylist()) == {leaky}
    # the ledger says why, and the catalog's stage_results view shows it
    row = ws.ledger.get(leaky, "audit")
    assert (row.status, row.reason, row.item_kind) == ("rejected", "phi_quarantined", "exam")
    rej = query_dicts(research, "SELECT exam_id, status, reason FROM stage_results WHERE stage = 'audit'")[1]
    assert rej == [{"exam_id": leaky, "status": "rejected", "reason": "phi_quarantined"}]
    # a re-run does not pick it up again (rejected as a whole)
    assert leaky not in ws.ledger.unfinished_exams([leaky, other])
    # the research zone is clean now: the quarantine's own re-audit and an independent one
    assert q.after is not None and q.after.ok, q.after.to_markdown()
    again = _audit(out)
    assert again.ok, again.to_markdown()

    # running it again is a no-op
    before = _files(out)
    attempt = ws.ledger.get(leaky, "audit").attempt
    q2 = quarantine_leaks(out, rep)
    assert (q2.exams, q2.moved, q2.already) == ([], [], [leaky])
    assert _files(out) == before
    assert ws.ledger.get(leaky, "audit").attempt == attempt


def test_report_and_error_name_no_value(out):
    leaky, _ = _exams(out)
    _plant(out, leaky)
    src = _source(out, leaky)
    log = out.parent / "logs" / "curate.log"
    log.parent.mkdir()
    log.write_text(f"INFO start\nWARNING retrying {src.AccessionNumber}\n")
    rep = _audit(out, extra_paths=[log])
    q = quarantine_leaks(out, rep)
    assert q.not_moved == [str(log)]                # a log cannot move: the report names it
    assert log.exists()
    path = write_report(out, rep, q)
    assert path.parent == out / "restricted" / "quarantine" and path.suffix == ".md"
    text = path.read_text()
    assert "## Quarantine" in text and "## Research zone after quarantine" in text and "**clean**" in text
    err = PhiLeakError(rep, report_path=path, quarantine=q)
    ids = collect_identifiers(out)
    for shown in (str(err), text, q.to_markdown()):
        assert not ids.find(shown), shown
    assert str(path) in str(err) and "1 exam(s) quarantined" in str(err)
    assert str(log) not in str(err)                 # counts and the report path only
    # Prefect may pickle the exception: it travels without the identifier index
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) and back.report.identifier_index is None
    assert len(back.report.hits) == len(rep.hits) and back.report_path == path


@pytest.mark.parametrize("batch_rows", [65_536, 1])
def test_hit_in_catalog_rows_only(out, batch_rows, monkeypatch):
    """An identifier in a consolidated catalog table names only the column: the exam is found by its rows.
    Tables are read in batches of BATCH_ROWS rows (bounded memory): a hit in a later batch counts
    the same (batch_rows=1: every row is its own batch)."""
    from mrifoundry.tasks.curation.audit import scanners
    monkeypatch.setattr(scanners, "BATCH_ROWS", batch_rows)
    leaky, other = _exams(out)
    src = _source(out, leaky)
    path = out / "research" / "catalog" / "series" / "series.parquet"
    table = pq.read_table(path)
    col = table.column_names.index("series_description")
    exams = table.column("exam_id").to_pylist()
    values = [f"AX T1 {src.AccessionNumber}" if e == leaky else v
              for e, v in zip(exams, table.column(col).to_pylist())]
    pq.write_table(table.set_column(col, "series_description", [values]), path)
    rep = _audit(out)
    assert {h.place for h in rep.hits} >= {"research/catalog/series/series.parquet"}
    q = quarantine_leaks(out, rep)
    assert q.exams == [leaky]
    assert "research/catalog/series/series.parquet" in q.rebuilt
    assert _exams(out) == [other]
    assert not (out / "research" / "dicom" / leaky).exists()
    assert q.after.ok and _audit(out).ok


def test_files_outside_the_exam_folders(out):
    """A leaking research file of no exam moves alone; one under another folder with an exam id as a
    component (a feature grid) moves with its exam."""
    import numpy as np
    leaky, other = _exams(out)
    src = _source(out, leaky)
    cache = out / "research" / "cache" / "volumes"
    cache.mkdir(parents=True)
    np.save(cache / "text.npy", np.frombuffer(f"x {src.AccessionNumber} y".encode(), dtype=np.uint8))
    grid = out / "research" / "features" / "fs1" / "grids" / leaky / "g.npy"
    grid.parent.mkdir(parents=True)
    np.save(grid, np.zeros(2, dtype=[(f"id {src.PatientID}", "<f4")]))
    rep = _audit(out)
    q = quarantine_leaks(out, rep)
    qdir = out / "restricted" / "quarantine"
    assert q.exams == [leaky] and _exams(out) == [other]
    assert (qdir / "cache" / "volumes" / "text.npy").is_file() and not (cache / "text.npy").exists()
    assert (qdir / "features" / "fs1" / "grids" / leaky / "g.npy").is_file() and not grid.exists()
    assert q.after.ok and _audit(out).ok


def test_clean_report_moves_nothing(out):
    rep = _audit(out)
    q = quarantine_leaks(out, rep)
    assert not q.changed and q.after is None
    assert not (out / "restricted" / "quarantine").exists()


def test_run_audit_quarantines_then_fails(out):
    """tasks.curation.runner.audit_or_quarantine (the end of every curation and ingest run):
    quarantine before failing; the error carries counts and the report path."""
    from mrifoundry.tasks.curation.runner import audit_or_quarantine
    leaky, other = _exams(out)
    _plant(out, leaky)
    with pytest.raises(PhiLeakError) as err:
        audit_or_quarantine(out, None)
    msg = str(err.value)
    report = Path(msg.rsplit("report: ", 1)[1])
    assert report.is_file() and report.parent == out / "restricted" / "quarantine"
    assert "1 exam(s) quarantined" in msg and "research zone after quarantine: 0 hit(s)" in msg
    assert not collect_identifiers(out).find(msg)
    assert not (out / "research" / "dicom" / leaky).exists() and _exams(out) == [other]


def test_a_run_that_quarantines_rebuilds_its_review_page_without_the_exam(out):
    """The review page is built before the audit; a quarantine drops an exam, and the run
    rebuilds the page from what is left (no card, thumbnail or viewer copy of that exam)."""
    from mrifoundry.params import CurateParams
    from mrifoundry.tasks.curation.runner import run_curation
    leaky, other = _exams(out)
    _plant(out, leaky)
    research = out / "research"
    gone = [r["series_id"] for r in query_dicts(research, f"SELECT series_id FROM series WHERE exam_id = '{leaky}'")[1]]
    assert gone
    with pytest.raises(PhiLeakError):
        run_curation(CurateParams(archive=str(ARCHIVE["curated"]), reports=None, out=str(out), workers=1,
                                  voxel_size_mm=4.0))
    data = json.loads((research / "qc" / "data.js").read_text().removeprefix("window.MRIF_QC = ").rstrip(";\n"))
    assert {s["exam_id"] for s in data["series"]} == {other}
    left = {p.stem for d in ("thumbs", "volumes") for p in (research / "qc" / d).glob("*")}
    assert left and not left & set(gone)


def test_a_folder_the_audit_cannot_list_is_reported(out, monkeypatch):
    """The walk is a stream (os.walk): a folder it cannot list is an unreadable place in the
    report (the audit is not ok), never skipped silently."""
    import os
    leaky, _ = _exams(out)
    blocked = out / "research" / "png" / leaky
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(blocked):
            raise PermissionError(13, "Permission denied", str(blocked))
        return real(path)
    monkeypatch.setattr(os, "scandir", scandir)
    rep = _audit(out)
    assert not rep.ok and (f"research/png/{leaky}", "PermissionError") in rep.errors
