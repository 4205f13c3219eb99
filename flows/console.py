"""The command's console: telemetry off, Prefect quiet, and one line with an exit code for every
expected condition (docs/runbook.md). Used by :mod:`flows.cli` before and around each verb."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path

#: set for every run before Prefect is imported; a value already in the environment wins
QUIET_PRIVATE_ENV = {
    "DO_NOT_TRACK": "1",                                   # Prefect's SDK usage telemetry: off
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",           # the (temporary) server's usage reporting: off
    "PREFECT_LOGGING_LEVEL": "WARNING",                    # no "Starting temporary server …", no per-task lines
    "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",             # the temporary server's own logs
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",  # a loaded box starts it in > 20 s
}


def quiet_private_env() -> None:
    """Telemetry off and Prefect's temporary server quiet (see QUIET_PRIVATE_ENV)."""
    for k, v in QUIET_PRIVATE_ENV.items():
        os.environ.setdefault(k, v)


def start_quiet_temporary_server() -> Path | None:
    """Without PREFECT_API_URL, Prefect runs flows against a temporary server that it starts on
    first use, writing to our console (its shutdown logs tracebacks of unflushed events). Start
    it here instead, its stdout/stderr going to ``MRIFOUNDRY_HOME/logs/prefect-server.log``
    (searched by the PHI audit like the other logs); Prefect reuses it (one per process).

    Returns:
        The log file, or None where a server is configured or already running.
    """
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import get_current_settings
    from mrifoundry.settings import Settings
    s = get_current_settings()
    server = SubprocessASGIServer()
    if s.api.url or not s.server.ephemeral.enabled or server.running:
        return None
    log = Settings().home / "logs" / "prefect-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    try:
        with open(log, "ab") as fh:
            # the child inherits fds 1 and 2 as they are when it starts
            os.dup2(fh.fileno(), 1)
            os.dup2(fh.fileno(), 2)
            try:
                server.start()
            finally:
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
    finally:
        os.close(saved[0])
        os.close(saved[1])
    # for the processes this run starts: Dask workers (a LocalCluster's, SLURM jobs through sbatch's
    # exported environment) report their task runs here instead of each starting a temporary server
    # of its own (measured: one more uvicorn per worker, +15 s on a 3-exam runner=slurm run)
    os.environ.setdefault("PREFECT_API_URL", server.api_url)
    return log


class _NoExpectedTracebacks:
    """Console-handler filter: a flow or task run that ends in an expected condition (run lock,
    disk full, PHI audit, a failed item) keeps its log line but not its traceback; ``run_verb``
    then prints the one line that says what to do. (The Prefect API handler, called first, keeps it.)"""

    def filter(self, record) -> bool:
        e = record.exc_info[1] if record.exc_info else None
        if e is not None:
            from mrifoundry.errors import CurationError
            if isinstance(e, CurationError) or _expected_failure(e, None) is not None:
                record.exc_info, record.exc_text = None, None
        return True


def _prepare_prefect(a) -> None:
    """Before a flow verb calls its flow: no tracebacks of expected conditions on the console
    (unless --debug), and a quiet temporary server."""
    if not _debug(a):
        import logging
        from prefect.logging.configuration import ensure_logging_setup
        from prefect.logging.handlers import PrefectConsoleHandler
        ensure_logging_setup()  # else Prefect sets it up (new handlers) at the first flow run
        for h in logging.getLogger().handlers:
            if isinstance(h, PrefectConsoleHandler) and not any(isinstance(f, _NoExpectedTracebacks) for f in h.filters):
                h.addFilter(_NoExpectedTracebacks())
    start_quiet_temporary_server()


def _debug(a) -> bool:
    return bool(getattr(a, "debug", False)) or os.environ.get("MRIFOUNDRY_DEBUG", "").lower() in ("1", "true", "yes")


def _one_line(e: BaseException) -> str:
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)


def _expected_failure(e: BaseException, a) -> tuple[int, str] | None:
    """(exit code, one-line message) of an expected condition; None for a bug (traceback)."""
    from mrifoundry.run_lock import OutputBusy
    from mrifoundry import errors
    if isinstance(e, OutputBusy):
        return errors.EXIT_BUSY, _one_line(e)
    if isinstance(e, errors.DiskFull):
        return errors.EXIT_DISK_FULL, _one_line(e)
    if errors.is_disk_full(e):   # ENOSPC/EDQUOT however it surfaced (OSError, SQLite, Arrow, DuckDB)
        return errors.EXIT_DISK_FULL, (f"no space left on the device ({getattr(e, 'filename', None) or 'output'}): "
                                       "free space under OUT and re-run; finished exams are kept")
    if isinstance(e, (FileNotFoundError, errors.UsageError)):
        return errors.EXIT_USAGE, _one_line(e)
    if type(e).__name__ == "PhiLeakError" and hasattr(e, "report"):
        rep = e.report
        places = {h.place for h in rep.hits} | {p for p, _ in rep.errors}
        where = getattr(e, "report_path", None) or getattr(rep, "path", None)
        where = (f"the report is {where}" if where else
                 f"the report: `mrifoundry phi-audit --out {getattr(a, 'out', None) or 'OUT'}` "
                 "(and the run's `phi-audit` artifact)")
        return errors.EXIT_PHI, (f"PHI audit failed: restricted-zone identifiers in {len(places)} place(s) "
                                 f"({len(rep.hits)} hit(s), {len(rep.errors)} unreadable); {where}")
    if isinstance(e, RuntimeError) and (" stage task(s) failed" in str(e) or type(e).__name__ == "CurationFailed"):
        return errors.EXIT_FAILED_ITEMS, _one_line(e)
    return None


def run_verb(a) -> int:
    """``a.fn(a)``; an expected condition prints one line on stderr and returns its exit code
    (mrifoundry/errors.py, docs/runbook.md). ``--debug`` or MRIFOUNDRY_DEBUG=1 re-raises instead."""
    try:
        return a.fn(a)
    except Exception as e:
        known = None if _debug(a) else _expected_failure(e, a)
        if known is None:
            raise
        code, msg = known
        print(f"mrifoundry {a.cmd}: {msg}", file=sys.stderr)
        return code


def _check_inputs(paths: dict[str, str | None]) -> None:
    """A missing input folder or file ({argument: path}) fails here, before Prefect starts (exit EXIT_USAGE)."""
    from mrifoundry.flows.params import SAMPLE
    from mrifoundry.settings import expand_home
    for arg, v in paths.items():
        if v and v != SAMPLE and "://" not in v and not Path(expand_home(v)).exists():
            raise FileNotFoundError(errno.ENOENT, f"{arg} not found", v)


def _check_not_busy(out: str | None) -> None:
    """Another run holding OUT/state/run.lock fails here, before Prefect starts (the flow takes the lock)."""
    from mrifoundry.settings import expand_home
    from mrifoundry.run_lock import RunLock
    if out and (Path(expand_home(out)) / "state" / "run.lock").exists():
        with RunLock(Path(expand_home(out)) / "state"):
            pass
