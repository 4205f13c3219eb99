"""One series never takes its exam down (issue 19): an error in one series fails that series
alone, with its traceback in restricted/logs and the exception and place in the ledger; the
exam's other series go through to the catalog, and ``rerun=failed`` redoes the exam until done."""
from __future__ import annotations

import pydicom
import pytest

from mrifoundry import ids
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation import stages
from mrifoundry.tasks.curation.deid import frames
from mrifoundry.tasks.curation.selection.exams import select_exams
from mrifoundry.tasks.curation.stage_guard import must_run
from mrifoundry.tasks.curation.workspace import Workspace
from tests.badinput.outcomes import part_rows
from tests.dicom_factory import write_series


@pytest.fixture
def exam(tmp_path):
    good = write_series(tmp_path / "arch" / "a", n_slices=6, extra={"AccessionNumber": "ISO1"})
    study = pydicom.dcmread(good[0]).StudyInstanceUID
    bad = write_series(tmp_path / "arch" / "b", n_slices=6, series_description="BOLD",
                       extra={"AccessionNumber": "ISO1", "StudyInstanceUID": study})
    ws = Workspace(tmp_path / "out")
    params = CurateParams(archive=str(tmp_path / "arch"), reports=None, out=str(ws.out), workers=1)
    (exam_id,) = select_exams(ws, params).exam_ids
    return ws, params, exam_id, str(pydicom.dcmread(bad[0]).SeriesInstanceUID)


def _break_series(monkeypatch, series_uid: str):
    real = frames.split_images

    def split(ds):
        if str(ds.SeriesInstanceUID) == series_uid:
            raise ValueError("frame functional groups do not add up")
        return real(ds)
    monkeypatch.setattr(frames, "split_images", split)


def test_deid_error_in_one_series_fails_that_series_only(exam, monkeypatch):
    ws, params, exam_id, bad_uid = exam
    _break_series(monkeypatch, bad_uid)
    out = stages.curate_exam(ws, params, exam_id)
    assert [o.status for o in out] == ["done"] * 5
    bad = ids.series_id(bad_uid, ws.salt)
    row = ws.ledger.get(bad, "deid")
    assert (row.status, row.reason) == ("failed", "deid_error")
    assert row.message.startswith("ValueError in test_series_isolation.py:") and "split" in row.message
    log = (ws.restricted / "logs" / "errors.log").read_text()
    assert "frame functional groups do not add up" in log and bad in log      # the traceback, kept restricted
    series = {r["series_id"]: r for r in part_rows(ws.research, "series", exam_id)}
    assert series[bad]["status"] == "failed"
    assert [r["status"] for k, r in series.items() if k != bad] == ["ok"]   # the other series was converted
    assert ws.ledger.failed_exams() == {exam_id}
    # rerun=failed picks the exam up again (its deid is done but has a failed series) and finishes it
    monkeypatch.undo()
    again = params.model_copy(update={"rerun": "failed"})
    assert select_exams(ws, again).exam_ids == [exam_id]
    assert must_run(ws, again, exam_id, "deid") is None
    stages.curate_exam(ws, again, exam_id)
    assert ws.ledger.failed_exams() == set()
    assert ws.ledger.state(exam_id, "catalog")[0] == "done"
    assert must_run(ws, again, exam_id, "catalog") == "done"   # and now there is nothing left to do


def test_unfinished_exams_are_picked_up_in_failed_mode(exam):
    ws, params, exam_id, _ = exam
    failed_mode = params.model_copy(update={"rerun": "failed"})
    # a run that never got to write a ledger row for this exam must not make it look finished
    assert select_exams(ws, failed_mode).exam_ids == [exam_id]
    stages.run_retrieve(ws, params, exam_id)
    stages.run_deid(ws, params, exam_id)          # cut short after deid (a killed or disk-full run)
    assert select_exams(ws, failed_mode).exam_ids == [exam_id]
    stages.curate_exam(ws, params, exam_id)
    assert select_exams(ws, failed_mode).exam_ids == []


def test_a_redone_stage_makes_the_next_one_run_again(exam):
    ws, params, exam_id, _ = exam
    stages.curate_exam(ws, params, exam_id)
    assert must_run(ws, params, exam_id, "catalog") == "done"
    stages.run_convert(ws, params.model_copy(update={"rerun": "all"}), exam_id)
    assert must_run(ws, params, exam_id, "catalog") is None
