"""Per-exam stage runners: ledger bookkeeping and artifacts around the stage functions.

Each ``run_*`` is a plain function of (workspace, params, exam_id): it decides whether the
stage must run (ledger + ``rerun`` mode), checks that the previous stage is done, calls
the stage logic, records one ledger row per item and writes its artifact. Unexpected
errors become ``failed`` rows whose message names only the exception class; the full
traceback goes to the restricted zone's error log (it may quote header values).
"""
from __future__ import annotations

import datetime as dt
import errno
import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mrifoundry.errors import CurationError
from mrifoundry.settings import CurateParams
from tasks.curation.workspace import Workspace

STAGE_ORDER = ("retrieve", "deid", "continuity", "convert", "catalog")


@dataclass
class StageOutcome:
    exam_id: str
    stage: str
    status: str                     # done | rejected | failed | skipped
    reason: str | None = None
    counts: dict = field(default_factory=dict)


def log_restricted(ws: Workspace, exam_id: str, stage: str) -> None:
    log = ws.restricted / "logs" / "errors.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(f"--- {dt.datetime.now(dt.timezone.utc).isoformat()} {exam_id} {stage}\n{traceback.format_exc()}\n")


def must_run(ws: Workspace, params: CurateParams, exam_id: str, stage: str) -> str | None:
    """None when the stage must run, else why it is skipped ('done', 'rejected', 'upstream …')."""
    idx = STAGE_ORDER.index(stage)
    if idx > 0:
        prev = ws.ledger.status(exam_id, STAGE_ORDER[idx - 1])
        if prev != "done":
            return f"upstream {STAGE_ORDER[idx - 1]} {prev or 'not run'}"
    if params.rerun == "all":
        return None
    status = ws.ledger.status(exam_id, stage)
    if status in ("done", "rejected"):
        return status
    return None


def guarded(stage: str):
    """Decorator: skip logic, ledger row for the exam, error capture."""
    def wrap(fn):
        def runner(ws: Workspace, params: CurateParams, exam_id: str) -> StageOutcome:
            skip = must_run(ws, params, exam_id, stage)
            if skip is not None:
                return StageOutcome(exam_id, stage, "skipped", reason=skip)
            started = time.time()
            try:
                outcome = fn(ws, params, exam_id)
            except CurationError as e:
                ws.ledger.record(exam_id, stage, e.status, exam_id=exam_id, reason=e.reason, message=e.message,
                                 started=started)
                return StageOutcome(exam_id, stage, e.status, e.reason)
            except OSError as e:
                log_restricted(ws, exam_id, stage)
                reason = "disk_full" if e.errno == errno.ENOSPC else f"{stage}_error"
                ws.ledger.record(exam_id, stage, "failed", exam_id=exam_id, reason=reason,
                                 message=f"{type(e).__name__} errno {e.errno}", started=started)
                return StageOutcome(exam_id, stage, "failed", reason)
            except Exception as e:  # noqa: BLE001 — any bug must not stop the other exams
                log_restricted(ws, exam_id, stage)
                reason = f"{stage}_error"
                ws.ledger.record(exam_id, stage, "failed", exam_id=exam_id, reason=reason,
                                 message=f"{type(e).__name__} (traceback in the restricted error log)",
                                 started=started)
                return StageOutcome(exam_id, stage, "failed", reason)
            ws.ledger.record(exam_id, stage, outcome.status, exam_id=exam_id, reason=outcome.reason,
                             message=json.dumps(outcome.counts, sort_keys=True), started=started)
            return outcome
        runner.__name__ = fn.__name__
        runner.__doc__ = fn.__doc__
        return runner
    return wrap


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a freshly written folder into place; a crash leaves either the old or the new one."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    if old.exists():
        shutil.rmtree(old)
