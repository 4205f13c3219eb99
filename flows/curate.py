"""Flow ``curate``: report export + archive → de-identified PNG/NIfTI corpus + catalog.

Wiring only: the run is tasks/curation/runner.py::run_curation (lock, selection, stages,
catalog, summary, PHI audit); here its exam step becomes one Prefect task per (exam, stage),
chained retrieve → deid → continuity → convert → catalog (tasks/curation/stages.py). Task
arguments are opaque exam ids and PHI-free parameters. Task results are cached per flow
run, so ``prefect flow-run retry`` re-executes only the tasks that failed.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from pathlib import Path

from prefect import allow_failure, flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, \
    update_progress_artifact
from prefect.context import TaskRunContext

from mrifoundry.errors import CurationError, is_disk_full
from mrifoundry.flows.params import resolve
from mrifoundry.flows.runners import make_task_runner
from mrifoundry.flows.wrap import takes
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation import stages
from mrifoundry.tasks.curation.audit.phi_audit import PhiLeakError
from mrifoundry.tasks.curation.runner import CurationFailed, run_curation
from mrifoundry.tasks.curation.stage_guard import STAGE_ORDER
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
    fn = stages.STAGES[stage]

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


STAGE_TASKS = {s: _stage_task(s) for s in stages.STAGES}


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


def prefect_exams(ws: Workspace, params: CurateParams, exam_ids: list[str], say) -> dict:
    """The runner's exam step as Prefect tasks: one per (exam, stage), on ``params.runner``."""
    sub = curate_exams.with_options(task_runner=make_task_runner(params.runner, params.workers))
    return sub(str(ws.out), ws.run_id, params, exam_ids)


@flow(name="curate", log_prints=False)
@takes(CurateParams)
def curate(params: CurateParams) -> dict:
    """Curate an archive into OUT/research (see README): tasks/curation/runner.py::run_curation with
    one Prefect task per (exam, stage) on ``runner`` (threads, dask, dask://host:port, slurm), the
    run summary, QC montage, review page and PHI audit as artifacts."""
    logger = get_run_logger()
    params = resolve(params)
    try:
        res = run_curation(params, _run_id(), run_exams=prefect_exams, progress=logger.info)
    except CurationFailed as e:
        _artifacts(e.result)
        raise
    except PhiLeakError as e:
        if e.report_path:
            create_markdown_artifact(e.report_path.read_text(), key="phi-audit",
                                     description="PHI audit and quarantine (places only, no values)")
        raise
    _artifacts(res)
    return {k: res[k] for k in ("selection", "catalog", "stages")}


def _artifacts(res: dict) -> None:
    if res.get("summary"):
        create_markdown_artifact(Path(res["summary"]).read_text(), key="curate-summary",
                                 description="curation run summary")
    if res.get("montage"):
        create_link_artifact(f"file://{Path(res['montage']).resolve()}", link_text="QC montage (PNG)",
                             key="curate-qc-montage")
    if res.get("review_page"):
        create_link_artifact(f"file://{Path(res['review_page']).resolve()}", link_text="QC review page (offline HTML)",
                             key="curate-review-page",
                             description="every series: thumbnails, IQM strip plots, 3D viewer, keyboard rating; "
                                         "import decisions with `mrifoundry review import FILE`")
    if res.get("phi_audit"):
        create_markdown_artifact(res["phi_audit"], key="phi-audit", description="PHI audit (places only, no values)")
