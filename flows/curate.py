"""Flow ``curate``: report export + archive → de-identified PNG/NIfTI corpus + catalog.

Wiring only. Each stage is a plain function in tasks/ (tasks/curation/pipeline.py); here each
becomes a task per exam, chained retrieve → deid → continuity → convert → catalog. Task
arguments are opaque exam ids and PHI-free parameters. Task results are cached per flow
run, so ``prefect flow-run retry`` re-executes only the tasks that failed.
"""
from __future__ import annotations

import datetime as dt
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

from prefect import allow_failure, flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, \
    update_progress_artifact
from prefect.context import TaskRunContext

from mrifoundry.flows.params import resolve
from mrifoundry.run_lock import RunLock
from mrifoundry.flows.runners import make_task_runner
from mrifoundry.errors import CurationError, DiskFull, is_disk_full
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation import pipeline
from mrifoundry.tasks.curation.finalize import finalize_catalog, run_summary
from mrifoundry.tasks.curation.runner import audit_or_quarantine, stops_on_full_disk
from mrifoundry.tasks.curation.selection.exams import select_exams
from mrifoundry.tasks.curation.stages import STAGE_ORDER, reset_disk_full, sweep_temp
from mrifoundry.tasks.curation.workspace import Workspace


class StageFailed(CurationError):
    """Raised by a task whose item failed, so Prefect marks the task Failed (and retries it)."""


def _per_run_key(ctx: TaskRunContext, parameters: dict) -> str:
    """Same top-level flow run (e.g. `prefect flow-run retry`) → completed tasks come from the cache,
    unless the stage before was redone since (its ledger finish time is part of the key): a retried
    convert makes its exam's catalog task run again instead of returning stale rows."""
    stage, exam_id = ctx.task.name, parameters["exam_id"]
    prev = ""
    if stage in STAGE_ORDER[1:]:
        state = Workspace(Path(parameters["out"]), parameters["run_id"]).ledger.state(
            exam_id, STAGE_ORDER[STAGE_ORDER.index(stage) - 1])
        prev = f"-{state[1]:.6f}" if state and state[1] else ""
    return f"{stage}-{exam_id}-{parameters['run_id']}{prev}"


def _stage_task(stage: str):
    fn = pipeline.STAGES[stage]

    @task(name=stage, task_run_name=f"{stage}-{{exam_id}}", cache_key_fn=_per_run_key, persist_result=True,
          result_serializer="json", log_prints=False)
    def stage_task(out: str, run_id: str, params: CurateParams, exam_id: str) -> dict:
        o = fn(Workspace(Path(out), run_id), params, exam_id)
        if o.status == "failed" and o.reason != "disk_full":
            raise StageFailed(exam_id, o.reason or f"{stage}_error", f"{stage} failed ({o.reason})")
        if o.counts.get("series_failed"):   # Failed for Prefect (retry re-runs it); the exam's other series went on
            raise StageFailed(exam_id, f"{stage}_error", f"{stage}: {o.counts['series_failed']} series failed")
        return {"exam_id": o.exam_id, "stage": o.stage, "status": o.status, "reason": o.reason, **o.counts}
    return stage_task


STAGE_TASKS = {s: _stage_task(s) for s in pipeline.STAGES}


@task(name="select-exams", cache_key_fn=lambda ctx, p: f"select-{p['run_id']}",
      persist_result=True, result_serializer="json")
def select_task(out: str, run_id: str, params: CurateParams) -> dict:
    ws = Workspace(Path(out), run_id)
    sel = select_exams(ws, params)
    return {"exam_ids": sel.exam_ids, "counts": sel.counts, "space": sel.space}


@task(name="phi-audit")
def phi_audit_task(out: str, reports: str | None) -> dict:
    """Search every identifier of the restricted zone outside it. On a hit the leaking exams' research
    outputs move to restricted/quarantine/ (tasks/curation/audit/quarantine.py), the research zone is
    audited again, both results go to the artifact and a report file, and the task fails with counts
    and the report path (no values, no places)."""
    from mrifoundry.tasks.curation.audit.phi_audit import PhiLeakError
    try:
        rep = audit_or_quarantine(Path(out), reports)
    except PhiLeakError as e:
        if e.report_path:
            create_markdown_artifact(e.report_path.read_text(), key="phi-audit",
                                     description="PHI audit and quarantine (places only, no values)")
        raise
    create_markdown_artifact(rep.to_markdown(), key="phi-audit", description="PHI audit (places only, no values)")
    return {"hits": 0}


@task(name="finalize-catalog")
def finalize_task(out: str, run_id: str) -> dict:
    return finalize_catalog(Workspace(Path(out), run_id))


def _run_id() -> str:
    from prefect.runtime import flow_run
    return str(flow_run.id) if flow_run.id else "local"


@flow(name="curate-exams", log_prints=False)
def curate_exams(out: str, run_id: str, params: CurateParams, exam_ids: list[str]) -> dict:
    """Run the five stages over the exams, in batches; returns outcome counts per stage."""
    logger = get_run_logger()
    outcomes: dict[str, Counter] = defaultdict(Counter)
    total = len(exam_ids)
    progress = create_progress_artifact(progress=0.0, description="curate: exams through all stages")
    t0, finished = time.time(), 0
    for start in range(0, max(total, 1), params.batch_size):
        batch = exam_ids[start:start + params.batch_size]
        futures: dict[str, list] = defaultdict(list)
        for eid in batch:
            prev = None
            for stage, t in STAGE_TASKS.items():
                # allow_failure: a stage whose series failed still hands the others on (the
                # next stage itself skips an exam whose previous stage failed as a whole)
                prev = t.submit(out, run_id, params, eid, wait_for=[allow_failure(prev)] if prev else None)
                futures[stage].append(prev)
        for stage, futs in futures.items():
            for n, f in enumerate(futs, 1):
                f.wait()
                st = f.state
                if st.is_completed():
                    res = f.result()
                    full = res.get("reason") == "disk_full"
                    outcomes[stage]["disk_full" if full else res["status"]] += 1
                elif st.is_failed() or st.is_crashed():
                    exc = f.result(raise_on_failure=False)
                    outcomes[stage]["disk_full" if is_disk_full(exc) else "failed"] += 1
                else:
                    outcomes[stage]["skipped"] += 1
                if n == len(futs) or n % 25 == 0:
                    rate = (start + n) / max(time.time() - t0, 1e-6)
                    logger.info("%s: %d/%d exams (%.2f exams/s)", stage, start + n, total, rate)
        finished += len(batch)
        update_progress_artifact(progress, progress=100.0 * finished / max(total, 1))
        if any(c.get("disk_full") for c in outcomes.values()):
            logger.warning("disk full: no new exams started (%d of %d submitted)", finished, total)
            break
    logger.info("elapsed %.1f s for %d exams", time.time() - t0, total)
    return {k: dict(v) for k, v in outcomes.items()}


@flow(name="curate", log_prints=False)
def curate(
    archive: str | None = None,
    reports: str | None = None,
    out: str | None = None,
    rules: str | None = None,
    date_start: dt.date | None = dt.date(2016, 1, 1),
    date_end: dt.date | None = dt.date(2020, 12, 31),
    n_per_protocol: int = 150,
    seed: int = 0,
    min_slices: int = 5,
    voxel_size_mm: float | None = 1.0,
    nifti_shape: list[int] | None = None,
    nifti_timepoints: Literal["middle", "all"] = "middle",
    write_png: bool = True,
    write_nifti: bool = True,
    rerun: Literal["missing", "failed", "all"] = "missing",
    workers: int = 2,
    batch_size: int = 256,
    runner: str = "threads",
    phi_audit: bool = True,
    follow_symlinks: bool = False,
    max_file_mb: int = 8192,
    max_container_mb: int = 65536,
    max_container_ratio: float = 100.0,
) -> dict:
    """Curate an archive into OUT/research (see README). Parameters mirror ``CurateParams``;
    ``runner`` is threads, dask, dask://host:port or slurm (flows/runners.py); ``phi_audit``
    ends the run with the PHI audit of the whole output (tasks/curation/audit/phi_audit.py)."""
    logger = get_run_logger()
    params = resolve(CurateParams(**{k: v for k, v in locals().items() if k in CurateParams.model_fields}))
    out_dir = Path(params.out)
    run_id = _run_id()
    with RunLock(out_dir / "state"):
        reset_disk_full()
        sweep_temp(out_dir)    # what a killed or disk-full run left
        with stops_on_full_disk(out_dir, "archive index"):
            sel = select_task(str(out_dir), run_id, params)
        exam_ids, sel_counts = sel["exam_ids"], sel["counts"]
        logger.info("selection: %s", ", ".join(f"{k}={v}" for k, v in sel_counts.items()))
        need, free = sel["space"]
        if need > free:
            logger.warning("free space under OUT (%d MiB) may not hold this run (about %d MiB); "
                           "a full disk stops the run cleanly and a re-run finishes it", free >> 20, need >> 20)
        stages = curate_exams.with_options(task_runner=make_task_runner(runner, workers))(
            str(out_dir), run_id, params, exam_ids)
        with stops_on_full_disk(out_dir, "exam outputs"):
            if any(c.get("disk_full") for c in stages.values()):
                raise DiskFull("exam outputs")
        with stops_on_full_disk(out_dir, "catalog merge"):
            counts = finalize_task(str(out_dir), run_id)
        md, montage = run_summary(Workspace(out_dir, run_id), sel_counts, counts, stages)
        create_markdown_artifact(md, key="curate-summary", description="curation run summary")
        if montage:
            create_link_artifact(f"file://{montage.resolve()}", link_text="QC montage (PNG)", key="curate-qc-montage")
        logger.info("catalog: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        if phi_audit:
            phi_audit_task(str(out_dir), params.reports)
        # series-level failures (one series of an exam) are in the ledger, not in the task states
        failed_exams = Workspace(out_dir, run_id).ledger.failed_exams() & set(exam_ids)
    failed = sum(c.get("failed", 0) for c in stages.values())
    if failed or failed_exams:
        raise RuntimeError(f"{failed} stage task(s) failed, {len(failed_exams)} exam(s) with failed items; see "
                           "stage_results. Retry with `prefect flow-run retry` or rerun=failed.")
    return {"selection": sel_counts, "catalog": counts, "stages": stages}
