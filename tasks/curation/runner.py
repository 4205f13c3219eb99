"""The curation run without Prefect: select → five stages per exam → catalog → summary → PHI audit.

The one sequence of a curation run. The one-off CLI (``mrifoundry curate``, no server to start),
the vendor check, the benchmarks and the tests call it as it is: exams go through
:func:`tasks.curation.stages.curate_exam` on ``params.workers`` threads. The ``curate`` flow
calls it with ``run_exams`` that submits Prefect tasks instead, each carrying a group of
exams through :func:`exam_group` (``flows/curate.py``). The ledger makes a re-run pick up what is missing or failed
(``params.rerun``). A full
disk stops new exams and ends the run with :class:`mrifoundry.errors.DiskFull`; a PHI hit
quarantines the leaking exams and raises :class:`~tasks.curation.audit.phi_audit.PhiLeakError`;
failed items raise :class:`CurationFailed` after the catalog is written.
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from mrifoundry.errors import DiskFull, is_disk_full
from mrifoundry.run_lock import RunLock
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation.finalize import finalize_catalog, run_summary
from mrifoundry.tasks.curation.stages import curate_exam
from mrifoundry.tasks.curation.selection.exams import select_exams
from mrifoundry.tasks.curation.stage_guard import StageOutcome, disk_full, reset_disk_full, sweep_temp
from mrifoundry.tasks.curation.workspace import Workspace

__all__ = ["CurationFailed", "ExamRunner", "audit_or_quarantine", "exam_failed", "exam_group", "run_curation",
           "stops_on_full_disk", "tally", "threaded_exams"]
log = logging.getLogger(__name__)


class CurationFailed(RuntimeError):
    """Some items failed (their rows are in stage_results); ``rerun=failed`` redoes them.
    ``result`` is the run's result (the catalog of the others is written)."""

    def __init__(self, message: str, result: dict | None = None):
        super().__init__(message)
        self.result = result or {}


#: How a run takes its exams through the five stages: ``(ws, params, exam_ids, say)`` → outcome
#: counts per stage (``{"convert": {"done": 3, "disk_full": 1}, …}``).
ExamRunner = Callable[[Workspace, CurateParams, list, Callable[[str], None]], dict]


@contextlib.contextmanager
def stops_on_full_disk(out_dir: Path, where: str):
    """A full disk in the block ends the run as DiskFull (one line, exit 28), its temp files swept."""
    try:
        yield
    except Exception as e:
        if is_disk_full(e):
            sweep_temp(out_dir)
            raise DiskFull(where) from None
        raise


def run_curation(params: CurateParams, run_id: str = "local", *, run_exams: ExamRunner | None = None,
                 progress: Callable[[str], None] | None = None) -> dict:
    """Curate ``params.archive`` into ``params.out`` (paths already resolved:
    :func:`mrifoundry.flows.params.resolve`). Returns ``{"selection", "catalog", "stages",
    "summary", "montage", "phi_audit", "review_page"}``: selection counts, catalog row counts,
    outcome counts per stage, the run summary (markdown) and QC montage paths, the PHI audit's
    report (places only, no values; None when ``params.phi_audit`` is off) and the review page.

    Raises:
        mrifoundry.run_lock.OutputBusy: another run holds the output folder.
        DiskFull: the output disk filled; a re-run after freeing space finishes the work.
        PhiLeakError: the audit found an identifier outside the restricted zone.
        CurationFailed: items failed; the catalog of the others is written.
    """
    out_dir = Path(params.out)
    say = progress or (lambda line: log.info("%s", line))
    ws = Workspace(out_dir, run_id)
    with RunLock(out_dir / "state"):
        reset_disk_full()
        sweep_temp(out_dir)    # what a killed or disk-full run left
        with stops_on_full_disk(out_dir, "archive index"):
            sel = select_exams(ws, params)
        say("selection: " + ", ".join(f"{k}={v}" for k, v in sel.counts.items()))
        need, free = sel.space
        if need > free:
            say(f"free space under OUT ({free >> 20} MiB) may not hold this run (about {need >> 20} MiB); "
                "a full disk stops the run cleanly and a re-run finishes it")
        stages = (run_exams or threaded_exams)(ws, params, sel.exam_ids, say)
        if stages.pop("_stopped", None) or any(c.get("disk_full") for c in stages.values()):
            sweep_temp(out_dir)
            raise DiskFull("exam outputs")
        with stops_on_full_disk(out_dir, "catalog merge"):
            counts = finalize_catalog(ws)
        md, montage = run_summary(ws, sel.counts, counts, stages, params.qc_per_body_part)
        summary = ws.research / "qc" / "summary.md"
        summary.parent.mkdir(parents=True, exist_ok=True)
        summary.write_text(md)
        say("catalog: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        review = _review_page(ws, params, run_id, say)
        audit = None
        if params.phi_audit:
            from mrifoundry.tasks.curation.audit.phi_audit import PhiLeakError
            try:
                audit = audit_or_quarantine(out_dir, params.reports, params.workers).to_markdown()
            except PhiLeakError:   # the quarantine dropped exams (and may have moved data.js): rebuild
                if review:
                    _review_page(ws, params, run_id, say)
                raise
        failed_exams = ws.ledger.failed_exams() & set(sel.exam_ids)
    result = {"selection": sel.counts, "catalog": counts, "stages": stages, "summary": str(summary),
              "montage": str(montage) if montage else None, "phi_audit": audit,
              "review_page": review["page"] if review else None}
    failed = sum(c.get("failed", 0) for c in stages.values())
    if failed or failed_exams:
        raise CurationFailed(f"{failed} stage(s) failed, {len(failed_exams)} exam(s) with failed items; see "
                             "stage_results. Re-run with rerun=failed (--rerun failed).", result)
    return result


def _review_page(ws: Workspace, params: CurateParams, run_id: str, say) -> dict | None:
    """The offline QC review page (tasks/curation/review/page.py), or None when switched off;
    first the metrics of converted series that have none (a catalog older than the metrics)."""
    if not params.review_page:
        return None
    from mrifoundry.tasks.curation.quality.backfill import backfill_quality
    from mrifoundry.tasks.curation.review.page import build_review_page
    with stops_on_full_disk(ws.out, "review page"):
        backfill_quality(ws.research, workers=params.workers, progress=say)
        res = build_review_page(ws.research, run_id=run_id, max_volumes=params.review_volumes, progress=say)
    say(f"review page: {res['page']} ({res['series']} series, {res['volumes']} with a 3D view)")
    return res


def tally(outcomes: dict, result: list[StageOutcome] | None) -> bool:
    """Add one exam's stage outcomes to ``outcomes`` (per stage: done/rejected/failed/skipped/
    disk_full; ``_stopped`` counts exams not started or cut short by a full disk). True when it
    hit a full disk."""
    if result is None:
        outcomes["_stopped"]["exams"] += 1
        return True
    full = False
    for o in result:
        hit = o.reason == "disk_full"
        outcomes[o.stage]["disk_full" if hit else o.status] += 1
        full |= hit
    if full:
        outcomes["_stopped"]["exams"] += 1
    return full


def exam_failed(result: list[StageOutcome]) -> bool:
    """A stage of the exam failed (not for a full disk), or some of its series did."""
    return any((o.status == "failed" and o.reason != "disk_full") or o.counts.get("series_failed") for o in result)


def _one(ws: Workspace, params: CurateParams, exam_id: str) -> list[StageOutcome] | None:
    return None if disk_full(ws) else curate_exam(ws, params, exam_id)


def threaded_exams(ws: Workspace, params: CurateParams, exam_ids: list[str], say) -> dict:
    """Every exam through the five stages on ``params.workers`` threads; outcome counts per stage.
    After a full disk no new exam starts (``_stopped`` is then set)."""
    outcomes: dict = defaultdict(Counter)
    total, t0, done = len(exam_ids), time.time(), 0
    with ThreadPoolExecutor(max_workers=max(1, params.workers)) as pool:
        for result in pool.map(lambda e: _one(ws, params, e), exam_ids):
            done += 1
            tally(outcomes, result)
            if done == total or done % 25 == 0:
                say(f"{done}/{total} exams ({done / max(time.time() - t0, 1e-6):.2f} exams/s)")
    return {k: dict(v) for k, v in outcomes.items()}


def exam_group(ws: Workspace, params: CurateParams, exam_ids: list[str],
               on_exam: Callable[[str, list[StageOutcome], float], None] | None = None) -> dict:
    """Exams one after another through the five stages: what one Prefect task carries
    (flows/curate.py). Outcome counts per stage as :func:`threaded_exams`, plus
    ``_failed: {"exams": n}`` for exams with a failed stage or series. ``on_exam(exam_id,
    outcomes, seconds)`` after each exam. After a full disk the rest are not started."""
    outcomes: dict = defaultdict(Counter)
    for i, eid in enumerate(exam_ids):
        t0 = time.perf_counter()
        result = _one(ws, params, eid)
        if tally(outcomes, result):
            outcomes["_stopped"]["exams"] += len(exam_ids) - i - 1
            break
        if exam_failed(result):
            outcomes["_failed"]["exams"] += 1
        if on_exam:
            on_exam(eid, result, time.perf_counter() - t0)
    return {k: dict(v) for k, v in outcomes.items()}


def audit_or_quarantine(out_dir: Path, reports: str | None, workers: int = 1):
    """The PHI audit of the whole output; its report when clean. On a hit the leaking exams'
    research outputs move to restricted/quarantine/ (tasks/curation/audit/quarantine.py), the
    report is written there and PhiLeakError raised (counts and the report path, no values)."""
    from mrifoundry.tasks.curation.audit.phi_audit import PhiLeakError, audit_output
    from mrifoundry.tasks.curation.audit.quarantine import quarantine_leaks, write_report
    rep = audit_output(out_dir, Path(reports) if reports else None, workers=workers)
    if rep.ok:
        return rep
    try:
        quarantine, failed = quarantine_leaks(out_dir, rep), None
    except Exception as e:  # noqa: BLE001 - the run fails on the leak either way; its message may name a path
        quarantine, failed = None, type(e).__name__
    note = f"## Quarantine\n\nFailed ({failed}): move the places above by hand.\n" if failed else ""
    path = write_report(out_dir, rep, quarantine, note)
    raise PhiLeakError(rep, report_path=path, quarantine=quarantine) from None
