"""One curation run per output folder: a second one refuses instead of interleaving."""
from __future__ import annotations

import fcntl
from pathlib import Path


class OutputBusy(RuntimeError):
    """Another run holds the output folder. Wait for it, or use another output."""


class RunLock:
    def __init__(self, state: Path):
        state.mkdir(parents=True, exist_ok=True)
        self.path = state / "run.lock"

    def __enter__(self):
        self.fh = open(self.path, "a+")
        try:
            # an flock dies with its process: a SIGKILLed run never leaves a stale lock
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.fh.close()
            raise OutputBusy("another curate run holds this output folder; wait for it or use another --out")
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fh, fcntl.LOCK_UN)
        self.fh.close()
