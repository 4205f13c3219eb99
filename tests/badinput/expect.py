"""What a corpus case must produce (see docs/bad-input.md)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass
class SeriesExpect:
    uid: str                          # original SeriesInstanceUID (the test maps it to series_id)
    status: str                       # ok (converted) | rejected
    reason: str | None = None         # reason code when rejected
    stage: str = "continuity"         # the stage that rejects: deid | continuity
    n_slices: int | None = None       # per time point, checked when converted
    n_timepoints: int = 1
    orientation: str | None = None
    sequence_type: str | None = None
    min_value: float | None = None    # expected minimum over the PNG slices' rescaled values
    removed: str | None = None        # instance-level removal reason expected in the ledger


@dataclass
class CaseExpect:
    series: list[SeriesExpect]
    unattributed: str | None = None   # deid reason of files that name no series (unreadable_file)
    known_gap: str | None = None      # the outcome needs a fix outside this package: "needs fix in …"


@dataclass(frozen=True)
class Case:
    name: str
    description: str
    build: Callable                   # (Study) -> CaseExpect
