"""Flow ``curate``: report export + archive → de-identified PNG/NIfTI corpus + catalog.

Wiring only. Each stage is a plain function in tasks/ (tasks/exam_pipeline.py); here each
becomes a task per exam, chained retrieve → deid → continuity → convert → catalog. Task
arguments are opaque exam ids and PHI-free parameters. Task results are cached per flow
run, so ``prefect flow-run retry`` re-executes only the tasks that failed.
"""
from __future__ import annotations

import datetime as dt
import fcntl
import os
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, \
    update_progress_artifact
from prefect.context import TaskRunContext
from prefect.task_runners import ThreadPoolTaskRunner

from flows.params import resolve
from mrifoundry.errors import CurationError
from mrifoundry.settings import CurateParams
from tasks import exam_pipeline
from tasks.finalize import finalize_catalog, run_summary
from tasks.selection import select_exams
from tasks.workspace import Workspace


class StageFailed(CurationError):
    """Raised by a task whose item failed, so Prefect marks the task Failed (and retries it)."""


def _per_run_key(ctx: TaskRunContext, parameters: dict) -> str:
    # same flow run (e.g. `prefect flow-run retry`) → completed tasks come from the cache
    return f"{ctx.task.name}-{parameters['exam_id']}-{ctx.task_run.flow_run_id}"


def _stage_task(stage: str):
    fn = exam_pipeline.STAGES[stage]

    @task(name=stage, task_run_name=f"{stage}-{{exam_id}}", cache_key_fn=_per_run_key, persist_result=True,
          result_serializer="json", log_prints=False)
    def stage_task(out: str, run_id: str, params: CurateParams, exam_id: str) -> dict:
        o = fn(Workspace(Path(out), run_id), params, exam_id)
        if o.status == "failed":
            raise StageFailed(exam_id, o.reason or f"{stage}_error", f"{stage} failed ({o.reason})")
        return {"exam_id": o.exam_id, "stage": o.stage, "status": o.status, "reason": o.reason, **o.counts}
    return stage_task


STAGE_TASKS = {s: _stage_task(s) for s in exam_pipeline.STAGES}


@task(name="select-exams", cache_key_fn=lambda ctx, p: f"select-{ctx.task_run.flow_run_id}",
      persist_result=True, result_serializer="json")
def select_task(out: str, run_id: str, params: CurateParams) -> dict:
    ws = Workspace(Path(out), run_id)
    sel = select_exams(ws, params)
    if params.rerun == "failed":
        failed = {e for e in sel.exam_ids if ws.ledger.exam_failed(e)}
        sel.exam_ids = [e for e in sel.exam_ids if e in failed]
        sel.counts["exams_with_failures"] = len(sel.exam_ids)
    return {"exam_ids": sel.exam_ids, "counts": sel.counts}


@task(name="finalize-catalog")
def finalize_task(out: str, run_id: str) -> dict:
    return finalize_catalog(Workspace(Path(out), run_id))


class RunLock:
    """One curation run per output folder: a second one refuses instead of interleaving."""

    def __init__(self, state: Path):
        state.mkdir(parents=True, exist_ok=True)
        self.path = state / "run.lock"

    def __enter__(self):
        self.fh = open(self.path, "a+")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise RuntimeError("another curate run holds this output folder; wait for it or use another --out")
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()


def _run_id() -> str:
    from prefect.runtime import flow_run
    return str(flow_run.id) if flow_run.id else "local"


@flow(name="curate", log_prints=False,
      task_runner=ThreadPoolTaskRunner(max_workers=int(os.environ.get("MRIFOUNDRY_TASK_THREADS", "3"))))
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
    write_png: bool = True,
    write_nifti: bool = True,
    rerun: Literal["missing", "failed", "all"] = "missing",
    workers: int = 2,
    batch_size: int = 256,
) -> dict:
    """Curate an archive into OUT/research (see README). Parameters mirror ``CurateParams``."""
    logger = get_run_logger()
    params = resolve(CurateParams(**{k: v for k, v in locals().items() if k in CurateParams.model_fields}))
    out_dir = Path(params.out)
    run_id = _run_id()
    with RunLock(out_dir / "state"):
        sel = select_task(str(out_dir), run_id, params)
        exam_ids, sel_counts = sel["exam_ids"], sel["counts"]
        logger.info("selection: %s", ", ".join(f"{k}={v}" for k, v in sel_counts.items()))
        outcomes: dict[str, Counter] = defaultdict(Counter)
        failed_tasks = 0
        total = len(exam_ids)
        progress = create_progress_artifact(progress=0.0, description="curate: exams through all stages")
        t0, finished = time.time(), 0
        for start in range(0, max(total, 1), params.batch_size):
            batch = exam_ids[start:start + params.batch_size]
            futures: dict[str, list] = defaultdict(list)
            for eid in batch:
                prev = None
                for stage, t in STAGE_TASKS.items():
                    prev = t.submit(str(out_dir), run_id, params, eid, wait_for=[prev] if prev else None)
                    futures[stage].append(prev)
            for stage, futs in futures.items():
                done_n = 0
                for f in futs:
                    f.wait()
                    done_n += 1
                    st = f.state
                    if st.is_completed():
                        outcomes[stage][f.result()["status"]] += 1
                    elif st.is_failed() or st.is_crashed():
                        outcomes[stage]["failed"] += 1
                        failed_tasks += 1
                    else:
                        outcomes[stage]["skipped"] += 1
                    if done_n == len(futs) or done_n % 25 == 0:
                        rate = (start + done_n) / max(time.time() - t0, 1e-6)
                        logger.info("%s: %d/%d exams (%.2f exams/s)", stage, start + done_n, total, rate)
            finished += len(batch)
            update_progress_artifact(progress, progress=100.0 * finished / max(total, 1))
        counts = finalize_task(str(out_dir), run_id)
        md, montage = run_summary(Workspace(out_dir, run_id), sel_counts, counts,
                                  {k: dict(v) for k, v in outcomes.items()})
        create_markdown_artifact(md, key="curate-summary", description="curation run summary")
        if montage:
            create_link_artifact(f"file://{montage.resolve()}", link_text="QC montage (PNG)", key="curate-qc-montage")
        logger.info("catalog: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        logger.info("elapsed %.1f s", time.time() - t0)
    if failed_tasks:
        raise RuntimeError(f"{failed_tasks} stage task(s) failed; see stage_results. "
                           "Retry with `prefect flow-run retry` or rerun=failed.")
    return {"selection": sel_counts, "catalog": counts, "stages": {k: dict(v) for k, v in outcomes.items()}}


__all__ = ["curate", "os"]
