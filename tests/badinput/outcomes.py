"""Compare what curation produced for a corpus case with its :class:`CaseExpect`.

The checks read the stage ledger and catalog rows (from the per-exam Parquet parts after
``curate_exam``, or from the DuckDB catalog after a flow run) and return a list of
problems, empty when the case came out as expected.
"""
from __future__ import annotations

import math
from pathlib import Path

import pyarrow.parquet as pq

from mrifoundry import ids
from tests.badinput.expect import CaseExpect

STAGES = ("retrieve", "deid", "continuity", "convert", "catalog")


def part_rows(research: Path, table: str, exam_id: str) -> list[dict]:
    """Rows of one exam's catalog part (written by the catalog stage before the run merges them)."""
    path = research / "catalog" / "_parts" / table / f"{exam_id}.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def check_case(exp: CaseExpect, *, exam_id: str, salt: str, research: Path, ledger: list[dict],
               series_rows: list[dict], slice_rows: list[dict]) -> list[str]:
    """Problems with one case's outcome (``ledger``/``*_rows`` may hold other exams too)."""
    problems: list[str] = []
    led = {(r["item_id"], r["stage"]): r for r in ledger if r["exam_id"] == exam_id}
    failed = sorted({(k[1], r["reason"]) for k, r in led.items() if r["status"] == "failed"})
    if failed:
        problems.append(f"failed ledger rows {failed}")
    for stage in STAGES:
        row = led.get((exam_id, stage))
        if row is None or row["status"] != "done":
            problems.append(f"exam {stage}: {row and (row['status'], row['reason'])}")
    unattributed = led.get((f"{exam_id}/unattributed", "deid"))
    got_unattr = unattributed["reason"] if unattributed else None
    if got_unattr != exp.unattributed:
        problems.append(f"unattributed files: expected {exp.unattributed}, got {got_unattr}")
    series = {r["series_id"]: r for r in series_rows if r["exam_id"] == exam_id}
    expected_ids = set()
    for se in exp.series:
        sid = ids.series_id(se.uid, salt)
        expected_ids.add(sid)
        row = series.get(sid)
        where = f"series {se.status}/{se.reason}"
        if row is None:
            problems.append(f"{where}: no catalog row")
            continue
        if (row["status"], row["reason"]) != (se.status, se.reason):
            problems.append(f"{where}: catalog says {row['status']}/{row['reason']}")
        stage_row = led.get((sid, se.stage if se.status == "rejected" else "convert"))
        want = ("rejected", se.reason) if se.status == "rejected" else ("done", None)
        got = stage_row and (stage_row["status"], stage_row["reason"])
        if got != want:
            problems.append(f"{where}: ledger {se.stage} says {got}")
        if se.status == "ok":
            problems += _check_converted(se, row, [s for s in slice_rows if s["series_id"] == sid], research)
        if se.removed and not any(k[0].startswith(sid + "/") and r["reason"] == se.removed for k, r in led.items()):
            problems.append(f"{where}: no instance removed as {se.removed}")
    extra = sorted((r["status"], r["reason"]) for sid, r in series.items() if sid not in expected_ids)
    if extra:
        problems.append(f"unexpected series {extra}")
    return problems


def _check_converted(se, row: dict, slices: list[dict], research: Path) -> list[str]:
    problems = []
    for key in ("n_slices", "n_timepoints", "orientation", "sequence_type"):
        want = getattr(se, key)
        if want is not None and row[key] != want:
            problems.append(f"{key}: expected {want}, got {row[key]}")
    if len(slices) != (se.n_slices or 0) * se.n_timepoints:
        problems.append(f"PNG slices: expected {se.n_slices} x {se.n_timepoints}, got {len(slices)}")
    if not all((research / s["png_path"]).is_file() for s in slices):
        problems.append("a PNG listed in the catalog is missing")
    if not row.get("nifti_path") or not (research / row["nifti_path"]).is_file():
        problems.append("NIfTI missing")
    if se.min_value is not None and slices:
        got = min(s["min_value"] for s in slices)
        if not math.isclose(got, se.min_value, abs_tol=1e-6):
            problems.append(f"min_value: expected {se.min_value}, got {got}")
    return problems
