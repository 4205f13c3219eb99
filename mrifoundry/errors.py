"""Exceptions of the curation stages.

Every error carries the opaque ``item_id`` it concerns and a ``reason`` code from
:mod:`catalog.reasons`, so the stage ledger can record it without ever formatting a
header value (which may be PHI) into a message.
"""
from __future__ import annotations


class CurationError(Exception):
    """Base class. ``reason`` is a code of :data:`catalog.reasons.REASONS`.

    Messages must not contain PHI: name tags and counts, never their values.
    """

    #: ``rejected`` = a data-quality decision (not retried); ``failed`` = an error (retried).
    status = "failed"

    def __init__(self, item_id: str, reason: str, message: str = ""):
        self.item_id = item_id
        self.reason = reason
        self.message = message or reason
        super().__init__(f"[{item_id}] {reason}: {self.message}")


class RejectedItem(CurationError):
    """The item is unusable for the corpus (a data-quality decision; a re-run will not retry it)."""

    status = "rejected"


class RetrievalError(CurationError):
    """The archive could not deliver the exam now (unreachable, refused, cut mid-way). Retried on re-run."""


class StageInputMissing(CurationError):
    """A stage's input artifact is missing: run the stage named in the message first."""


class InsufficientDiskSpace(CurationError):
    """Writing an output failed for lack of space. Free space and re-run; done items are kept."""


class DiskFull(Exception):
    """No space left on the output device: the run stopped taking new work. Nothing done is lost;
    free space and re-run (``--rerun missing`` or ``failed``) to finish the unfinished exams."""

    def __init__(self, where: str = "output"):
        self.where = where
        super().__init__(f"no space left on the device while writing the {where}: "
                         "free space under OUT and re-run; finished exams are kept, unfinished ones are picked up")


class UsageError(ValueError):
    """A parameter or input the run cannot work with; the message says what to give instead
    (the command prints it as one line, exit 2)."""


class NotFound(UsageError, KeyError):
    """A named thing (recipe, pretrain run, dataset) that is not there; the message lists what is."""

    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


#: exit codes of the ``mrifoundry`` command for expected conditions (one line on stderr, no traceback)
EXIT_FAILED_ITEMS = 1     # the run finished but some items failed (ledger ``failed``)
EXIT_USAGE = 2            # bad arguments or input that is not there
EXIT_BUSY = 3             # another run holds OUT/state/run.lock
EXIT_PHI = 4              # the PHI audit found identifiers (the leaking files were quarantined)
EXIT_DISK_FULL = 28       # ENOSPC: free space and re-run


_FULL_TEXT = ("no space left on device", "database or disk is full", "disk quota exceeded")


def is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC/EDQUOT however it surfaces: an OSError, SQLite's "database or disk is full", an Arrow
    or DuckDB I/O error quoting strerror — also as the cause or context of another exception."""
    import errno
    seen = 0
    while exc is not None and seen < 8:
        if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or isinstance(exc, DiskFull):
            return True
        if any(t in str(exc).lower() for t in _FULL_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def where(exc: BaseException) -> str:
    """'ValueError in frames.py:312 split_images': the exception and the innermost frame of the
    project's own code (no values: safe for the ledger)."""
    from pathlib import Path
    tb, last = exc.__traceback__, None
    while tb is not None:
        fname = tb.tb_frame.f_code.co_filename
        if "site-packages" not in fname and "/lib/python" not in fname:
            last = tb
        tb = tb.tb_next
    if last is None:
        return type(exc).__name__
    code = last.tb_frame.f_code
    return f"{type(exc).__name__} in {Path(code.co_filename).name}:{last.tb_lineno} {code.co_name}"
