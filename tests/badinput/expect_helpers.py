"""Shorthands for the case modules: a case registry decorator and expectation builders."""
from __future__ import annotations

from tests.badinput.expect import Case, SeriesExpect


def registry() -> tuple[list[Case], callable]:
    """A list of cases and a ``@case("description")`` decorator that appends to it."""
    cases: list[Case] = []

    def case(description: str):
        def deco(fn):
            cases.append(Case(fn.__name__, description, fn))
            return fn
        return deco
    return cases, case


def ok(uid: str, n: int = 12, orientation: str | None = "axial", **kw) -> SeriesExpect:
    return SeriesExpect(uid, "ok", n_slices=n, orientation=orientation, **kw)


def rejected(uid: str, reason: str, stage: str = "continuity") -> SeriesExpect:
    return SeriesExpect(uid, "rejected", reason=reason, stage=stage)
