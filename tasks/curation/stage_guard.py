"""What surrounds every curation stage (the stages themselves are tasks/curation/stages.py).

``guarded(stage)`` wraps a stage function of (workspace, params, exam_id): it decides whether
the stage must run (ledger + ``rerun`` mode), checks that the previous stage is done, records
the outcome in the ledger and sweeps what an interrupted attempt left. Unexpected errors become
``failed`` rows whose message names only the exception class; the full traceback goes to the
restricted zone's error log (it may quote header values). Also here: the run's disk-full flag
and the sweep of temp files a killed or disk-full run left.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from mrifoundry.atomic import TEMP_MARKS
from mrifoundry.errors import CurationError, DiskFull, is_disk_full, where
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation.workspace import Workspace

STAGE_ORDER = ("retrieve", "deid", "continuity", "convert", "catalog")


@dataclass
class StageOutcome:
    exam_id: str
    stage: str
    status: str                     # done | rejected | failed | skipped
    reason: str | None = None
    counts: dict = field(default_factory=dict)


#: set in this process at the first ENOSPC: no stage starts new work after it (other processes
#: see the free-space check in :func:`disk_full`)
_DISK_FULL = threading.Event()
MIN_FREE_BYTES = 1 << 20


def disk_full(ws: Workspace) -> bool:
    """True once a write under OUT hit ENOSPC in this process, or when less than 1 MiB is free."""
    if _DISK_FULL.is_set():
        return True
    try:
        return shutil.disk_usage(ws.out).free < MIN_FREE_BYTES
    except OSError:
        return False


def mark_disk_full() -> None:
    _DISK_FULL.set()


def reset_disk_full() -> None:
    """A new run starts with a clean slate (space may have been freed)."""
    _DISK_FULL.clear()


def log_restricted(ws: Workspace, exam_id: str, stage: str, item: str | None = None) -> None:
    """Append the current traceback to ``restricted/logs/errors.log`` (it may quote header values).
    Never raises: on a full disk the ledger row matters more than the log."""
    log_text(ws, exam_id, stage, item, traceback.format_exc())


def log_text(ws: Workspace, exam_id: str, stage: str, item: str | None, text: str) -> None:
    """Like :func:`log_restricted` for a traceback captured elsewhere (a series that failed inside a stage)."""
    try:
        log = ws.restricted / "logs" / "errors.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", errors="backslashreplace") as fh:
            fh.write(f"--- {dt.datetime.now(dt.timezone.utc).isoformat()} {exam_id} {stage} {item or ''}\n{text}\n")
    except OSError:
        pass


def failure_message(exc: BaseException) -> str:
    """A ledger message for a failed item: the exception and where, no values."""
    return f"{where(exc)} (traceback in restricted/logs/errors.log)"


def must_run(ws: Workspace, params: CurateParams, exam_id: str, stage: str) -> str | None:
    """None when the stage must run, else why it is skipped ('done', 'rejected', 'upstream …').

    A ``done`` stage runs again when one of its items (a series) failed, or when the stage
    before it finished later (it was redone, so this stage's output is stale)."""
    if disk_full(ws):
        return "disk_full"
    states = ws.ledger.exam_stages(exam_id)     # one query for every stage of the exam
    idx = STAGE_ORDER.index(stage)
    prev = states.get(STAGE_ORDER[idx - 1]) if idx > 0 else None
    if idx > 0 and (prev is None or prev[0] != "done"):
        return f"upstream {STAGE_ORDER[idx - 1]} {prev[0] if prev and prev[0] else 'not run'}"
    if params.rerun == "all":
        return None
    if states.get("audit", (None,))[0] == "rejected":   # phi_quarantined: a person looks first
        return "phi_quarantined"
    status, finished, failed_items = states.get(stage, (None, None, False))
    if status is None or status == "failed":
        return None
    if status == "rejected":
        return "rejected"
    if failed_items:
        return None
    if prev is not None and prev[1] is not None and finished is not None and prev[1] > finished:
        return None
    return "done"


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
                ws.ledger.record(exam_id, stage, outcome.status, exam_id=exam_id, reason=outcome.reason,
                                 message=json.dumps(outcome.counts, sort_keys=True), started=started)
                return outcome
            except Exception as e:  # noqa: BLE001 — any bug must not stop the other exams
                if isinstance(e, CurationError) and not is_disk_full(e):
                    status, reason, message = e.status, e.reason, e.message
                    if status == "failed" and e.__cause__ is not None:
                        log_restricted(ws, exam_id, stage)
                else:
                    log_restricted(ws, exam_id, stage)
                    status, reason = "failed", ("disk_full" if is_disk_full(e) else f"{stage}_error")
                    message = failure_message(e)
                if reason == "disk_full":
                    mark_disk_full()
                    _sweep_exam(ws, exam_id)
                try:
                    ws.ledger.record(exam_id, stage, status, exam_id=exam_id, reason=reason, message=message,
                                     started=started)
                except Exception as le:  # noqa: BLE001
                    if is_disk_full(le):   # the ledger itself is full: stop, nothing looks finished
                        mark_disk_full()
                        raise DiskFull("stage ledger") from None
                    raise
                return StageOutcome(exam_id, stage, status, reason)
        runner.__name__ = fn.__name__
        runner.__doc__ = fn.__doc__
        return runner
    return wrap


#: mrifoundry.atomic's temp names, plus the stages' own ``.<name>.build…`` folders
_TEMP_MARKS = (*TEMP_MARKS, ".build")


def _is_temp(name: str) -> bool:
    """A temp file or folder of ours: ``.<name>.tmp…``, ``.<name>.old…``, ``.<name>.build…``."""
    return name.startswith(".") and any(m in name for m in _TEMP_MARKS)


def _remove(path: str | Path) -> bool:
    try:
        (shutil.rmtree if os.path.isdir(path) and not os.path.islink(path) else os.remove)(path)
        return True
    except OSError:
        return False


def _sweep_exam(ws: Workspace, exam_id: str) -> None:
    """Remove the temp files and folders a stage of this exam left when a write failed."""
    # research/dicom holds every exam: only this exam's own temp folders there
    places = [(ws.dicom_dir(exam_id).parent, lambda n: n.startswith(f".{exam_id}.") and _is_temp(n))]
    places += [(b, _is_temp) for b in (ws.dicom_dir(exam_id), ws.research / "png" / exam_id,
                                       ws.research / "nifti" / exam_id, ws.work(exam_id), ws.staging(exam_id))]
    for base, match in places:
        if base.is_dir():
            for p in list(base.iterdir()):
                if match(p.name):
                    _remove(p)


def sweep_temp(out: Path) -> int:
    """Remove every temp file and folder (``.*.tmp*``, ``.*.old*``, ``.*.build*``) under OUT's zones:
    what a killed or disk-full run left. Only call it under the run lock. Returns how many."""
    n = 0
    for zone in ("research", "restricted", "state"):
        for dirpath, dirs, files in os.walk(Path(out) / zone):
            for name in [d for d in dirs if _is_temp(d)] + [f for f in files if _is_temp(f)]:
                n += _remove(os.path.join(dirpath, name))
            dirs[:] = [d for d in dirs if not _is_temp(d)]
    return n
