"""Each bad-input case through the five exam stages (no Prefect): its expected outcome,
and nothing ends as an unexpected ``failed`` (a ``*_error`` reason is a crash)."""
from __future__ import annotations

import pytest

from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation.stages import curate_exam
from mrifoundry.tasks.curation.selection.exams import select_exams
from mrifoundry.tasks.curation.workspace import Workspace
from tests.badinput.corpus import all_cases, build_corpus
from tests.badinput.outcomes import check_case, part_rows

CASES = all_cases()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("badinput-corpus")
    return root, build_corpus(root)


def test_corpus_is_broad():
    assert len(CASES) >= 30
    assert len({c.description for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_case_outcome(name, corpus, tmp_path, request):
    root, expects = corpus
    exp = expects[name]
    if exp.known_gap:
        request.applymarker(pytest.mark.xfail(strict=True, reason=exp.known_gap))
    ws = Workspace(tmp_path / "out")
    params = CurateParams(archive=str(root / name), reports=None, out=str(ws.out), workers=1)
    selection = select_exams(ws, params)
    assert len(selection.exam_ids) == 1, f"expected one study, archive lists {len(selection.exam_ids)}"
    exam_id = selection.exam_ids[0]
    curate_exam(ws, params, exam_id)
    problems = check_case(exp, exam_id=exam_id, salt=ws.salt, research=ws.research,
                          ledger=ws.ledger.to_arrow().to_pylist(),
                          series_rows=part_rows(ws.research, "series", exam_id),
                          slice_rows=part_rows(ws.research, "slices", exam_id))
    assert not problems, problems
