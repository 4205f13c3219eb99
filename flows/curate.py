"""Flow ``curate``: report export + archive → de-identified PNG/NIfTI corpus + catalog.

Wiring only: the run is tasks/curation/runner.py::run_curation (lock, selection, stages,
catalog, summary, PHI audit); here its exam step becomes Prefect tasks that each take a group
of exams through retrieve → deid → continuity → convert → catalog (tasks/curation/stages.py;
``exams_per_task``, auto: 1 to 8, so a 10 k-exam run is ≈ 1,250 task runs, not 50 k). The
ledger keeps per-exam, per-stage status; progress is counted per exam from it. Task arguments
are opaque exam ids and PHI-free parameters. Task results are cached per flow run, so
``prefect flow-run retry`` re-executes only the groups that failed, and inside them the ledger
redoes only the stages that did not finish.
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, defaultdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, \
    update_progress_artifact
from prefect.context import TaskRunContext
from prefect.futures import wait

from mrifoundry.errors import is_disk_full
from mrifoundry.flows.params import resolve
from mrifoundry.flows.runners import make_task_runner
from mrifoundry.flows.wrap import takes
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation.audit.phi_audit import PhiLeakError
from mrifoundry.tasks.curation.runner import CurationFailed, exam_group, run_curation
from mrifoundry.tasks.curation.workspace import Workspace


class GroupFailed(RuntimeError):
    """A group task with failed exams: Prefect marks it Failed (a retry runs it again); its
    outcome counts ride along (picklable: both are ``args``)."""

    def __init__(self, message: str, outcomes: dict):
        super().__init__(message, outcomes)
        self.outcomes = outcomes


def _group_key(ctx: TaskRunContext, parameters: dict) -> str:
    """Same top-level flow run (e.g. `prefect flow-run retry`) and same exams → a completed group
    comes from the cache; a failed one runs again, and inside it the ledger skips every stage
    already done (tasks/curation/stage_guard.py::must_run)."""
    digest = hashlib.sha256(",".join(parameters["exam_ids"]).encode()).hexdigest()[:20]
    return f"exams-{parameters['run_id']}-{digest}"


def _exam_line(exam_id: str, outcomes: list, seconds: float) -> str:
    """One PHI-free line per exam: its opaque id, each stage's status (and reason code), seconds."""
    parts = [f"{o.stage} {o.status}" + (f" ({o.reason})" if o.reason and o.status != "done" else "")
             for o in outcomes]
    return f"{exam_id}: " + ", ".join(parts) + f" ({seconds:.1f} s)"


@task(name="exams", task_run_name="exams-{exam_ids[0]}+{n_more}", cache_key_fn=_group_key, persist_result=True,
      result_serializer="json", log_prints=False)
def exams_task(out: str, run_id: str, params: CurateParams, exam_ids: list[str], n_more: int = 0) -> dict:
    """A group of exams through the five stages (tasks/curation/runner.py::exam_group), one log
    line per exam. Failed (so that a retry runs it again) when an exam's stage or series failed;
    the outcome counts are its data either way."""
    logger = get_run_logger()
    res = exam_group(Workspace(Path(out), run_id), params, exam_ids,
                     on_exam=lambda e, o, sec: logger.info("%s", _exam_line(e, o, sec)))
    failed = res.get("_failed", {}).get("exams", 0)
    if failed:   # raised, not returned as a Failed state: a returned state's data would be cached
        raise GroupFailed(f"{failed} of {len(exam_ids)} exam(s) with a failed stage or series "
                          "(stage_results has the reasons)", res)
    return res


def group_size(n_exams: int, workers: int, asked: int = 0) -> int:
    """Exams per Prefect task: ``asked``, or (0) enough to keep the server at ≤ 1 task run per
    8 exams on a large run while every worker still gets ≥ 4 tasks (load balance at the end)."""
    if asked:
        return asked
    return max(1, min(MAX_GROUP, math.ceil(n_exams / (4 * max(1, workers)))))


#: the auto group size's ceiling (docs/scale-out.md, "task granularity": measured 1 to 16)
MAX_GROUP = 8
#: seconds between progress updates (ledger count, log line, progress artifact)
PROGRESS_S = 5.0


def _run_id() -> str:
    from prefect.runtime import flow_run
    return str(flow_run.id) if flow_run.id else "local"


@flow(name="curate-exams", log_prints=False)
def curate_exams(out: str, run_id: str, params: CurateParams, exam_ids: list[str]) -> dict:
    """The exams through the five stages as Prefect tasks of ``group_size`` exams each, at most
    ``batch_size`` exams in flight (no per-exam state kept here once a group is done); per-exam
    progress from the ledger; returns outcome counts per stage."""
    logger = get_run_logger()
    ws = Workspace(Path(out), run_id)
    total = len(exam_ids)
    k = group_size(total, params.workers, params.exams_per_task)
    groups = [exam_ids[i:i + k] for i in range(0, total, k)]
    window = max(2 * params.workers, math.ceil(params.batch_size / k))
    logger.info("%d exams in %d task(s) of up to %d exam(s), %d in flight", total, len(groups), k, window)
    progress = create_progress_artifact(progress=0.0, description="curate: exams through all stages")
    outcomes: dict = defaultdict(Counter)
    t0, ended, last_report, shown = time.time(), 0, 0.0, -1
    pending: dict = {}
    queue = iter(groups)
    stop = False
    while True:
        while not stop and len(pending) < window and (g := next(queue, None)) is not None:
            pending[exams_task.submit(out, run_id, params, g, len(g) - 1)] = g
        if not pending:
            break
        done, _ = wait(list(pending), timeout=1.0)
        for f in done:
            g = pending.pop(f)
            res = f.result(raise_on_failure=False)
            ended += len(g)
            res = res.outcomes if isinstance(res, GroupFailed) else res
            if isinstance(res, dict):
                for stage, c in res.items():
                    outcomes[stage].update(c)
            elif is_disk_full(res):   # the task itself crashed (an exam's failure is in its data)
                outcomes["_stopped"]["exams"] += len(g)
            else:
                outcomes["exams"]["failed"] += len(g)
        if outcomes.get("_stopped") and not stop:
            stop = True
            logger.warning("disk full: no new exams started (%d of %d ended)", ended, total)
        now = time.time()
        if now - last_report >= PROGRESS_S or not pending:
            in_flight = [e for g in pending.values() for e in g]
            n = ended + ws.ledger.exams_ended_since(in_flight, t0 - 1.0)
            if n != shown:
                rate = n / max(now - t0, 1e-6)
                eta = (total - n) / rate if rate > 0 else float("nan")
                logger.info("curate: %d/%d exams (%.2f exams/s, ETA %s)", n, total, rate, _hms(eta))
                update_progress_artifact(progress, progress=100.0 * n / max(total, 1))
                shown = n
            last_report = now
    logger.info("elapsed %.1f s for %d exams", time.time() - t0, total)
    outcomes.pop("_failed", None)
    return {k_: dict(v) for k_, v in outcomes.items()}


def _hms(s: float) -> str:
    if s != s:
        return "?"
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def prefect_exams(ws: Workspace, params: CurateParams, exam_ids: list[str], say) -> dict:
    """The runner's exam step as Prefect tasks of a group of exams each, on ``params.runner``."""
    sub = curate_exams.with_options(task_runner=make_task_runner(params.runner, params.workers))
    return sub(str(ws.out), ws.run_id, params, exam_ids)


@flow(name="curate", log_prints=False)
@takes(CurateParams)
def curate(params: CurateParams) -> dict:
    """Curate an archive into OUT/research (see README): tasks/curation/runner.py::run_curation with
    Prefect tasks of ``exams_per_task`` exams on ``runner`` (threads, dask, dask://host:port, slurm), the
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
