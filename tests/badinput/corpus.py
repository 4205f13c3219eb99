"""The bad-input corpus: broken or unusual study folders, each with its expected outcome.

``build_corpus(root)`` writes one study folder per case under ``root`` and returns
``{case name: CaseExpect}``. The outcomes are decided in ``docs/bad-input.md``: convert
what a sane tool converts (big endian, deflate, rescale, multi-echo, odd charsets …),
reject the rest with one specific reason code.

Run ``python -m tests.badinput.corpus OUT`` to write the corpus for a manual look.
"""
from __future__ import annotations

import sys
from pathlib import Path

from tests.badinput import cases_format, cases_geometry, cases_study
from tests.badinput.expect import Case, CaseExpect, SeriesExpect  # noqa: F401 - re-exported


def all_cases() -> list[Case]:
    cases = [*cases_study.CASES, *cases_format.CASES, *cases_geometry.CASES]
    names = [c.name for c in cases]
    assert len(names) == len(set(names)), "case names must be unique"
    return cases


def build_case(root: Path, case: Case, index: int) -> CaseExpect:
    from tests.badinput.writers import Study

    return case.build(Study(root / case.name, case.name, index))


def build_corpus(root: Path, only: list[str] | None = None) -> dict[str, CaseExpect]:
    """Write every case (or ``only`` these) as ``root/<case name>/``; indices are stable."""
    root = Path(root)
    out = {}
    for index, case in enumerate(all_cases(), 1):
        if only is None or case.name in only:
            out[case.name] = build_case(root, case, index)
    return out


if __name__ == "__main__":
    built = build_corpus(Path(sys.argv[1]))
    for name, exp in built.items():
        print(name, [(s.status, s.reason) for s in exp.series], exp.unattributed or "")
