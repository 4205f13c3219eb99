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
