"""Quality metrics inside curation: every converted series gets a series_quality row and a
thumbnail; a metric failure is its own ledger row that costs neither the series nor the exam's
other outputs, and rerun=failed recomputes it; review decisions survive a full re-run."""
from __future__ import annotations

import json

import pytest

from mrifoundry.catalog.schema import SERIES_QUALITY
from mrifoundry.catalog.store import write_table
from mrifoundry.catalog.views import build_research_db, connect
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation import stages
from mrifoundry.tasks.curation.runner import CurationFailed, run_curation
from mrifoundry.tasks.curation.review.decisions import import_decisions
from mrifoundry.tasks.curation.workspace import Workspace
from tests.flows.helpers import clean_exams, copy_exams


def _q(research, sql):
    con = connect(research)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def one_exam(manifest, sample, tmp_path_factory):
    (knee,) = clean_exams(manifest, ("KNEE",))
    archive, out = tmp_path_factory.mktemp("q-archive"), tmp_path_factory.mktemp("q-out")
    copy_exams(manifest, sample, archive, lambda e: e is knee)
    return archive, out


def _params(archive, out, rerun="missing"):
    return CurateParams(archive=str(archive), reports=None, out=str(out), workers=1, voxel_size_mm=3.0,
                        phi_audit=False, rerun=rerun)


def test_metrics_failure_recovery_and_decisions_across_reruns(one_exam, monkeypatch, tmp_path):
    archive, out = one_exam
    res = run_curation(_params(archive, out))
    research = Workspace(out).research
    ok = [r[0] for r in _q(research, "SELECT series_id FROM series WHERE status = 'ok' ORDER BY 1")]
    assert ok
    rows = _q(research, "SELECT series_id, snr, thumb_path, iqm_version FROM series_quality ORDER BY 1")
    assert [r[0] for r in rows] == ok and all(r[1] and r[1] > 0 for r in rows)
    assert all((research / r[2]).is_file() for r in rows)
    assert res["review_page"] and (research / "qc" / "data.js").is_file()
    data = json.loads((research / "qc" / "data.js").read_text().removeprefix("window.MRIF_QC = ").rstrip(";\n"))
    assert {s["series_id"] for s in data["series"]} == {r[0] for r in _q(research, "SELECT series_id FROM series")}

    # a rater excludes one series; a full re-run rewrites every exam but not the decisions
    sid = ok[0]
    export = tmp_path / "r.json"
    export.write_text(json.dumps({"format": "mrifoundry-review/1", "rater": "dr-a", "decisions": [
        {"series_id": sid, "decision": "exclude", "note": "", "decided_at": "2026-12-07T10:00:00Z"}]}))
    import_decisions(research, export)
    n_excluded = _q(research, f"SELECT count(*) FROM slices WHERE series_id = '{sid}'")[0][0]
    assert n_excluded > 0
    assert _q(research, f"SELECT count(*) FROM training_slices WHERE series_id = '{sid}'")[0][0] == 0

    # the metrics fail: the series stays converted and catalogued, the failure has its own row
    def boom(*a, **k):
        raise RuntimeError("metrics exploded")
    monkeypatch.setattr(stages, "series_quality", boom)
    with pytest.raises(CurationFailed):
        run_curation(_params(archive, out, rerun="all"))
    failed = _q(research, "SELECT item_id, item_kind, stage, reason FROM stage_results WHERE status = 'failed'")
    assert sorted(failed) == sorted((f"{s}/iqm", "quality", "convert", "iqm_error") for s in ok)
    assert [r[0] for r in _q(research, "SELECT series_id FROM series WHERE status = 'ok' ORDER BY 1")] == ok
    assert _q(research, "SELECT count(*) FROM series_quality")[0][0] == 0
    assert _q(research, f"SELECT count(*) FROM training_slices WHERE series_id = '{sid}'")[0][0] == 0   # still excluded

    # fixed: rerun=failed recomputes the metrics, and the decision still holds
    monkeypatch.undo()
    run_curation(_params(archive, out, rerun="failed"))
    assert [r[0] for r in _q(research, "SELECT series_id FROM series_quality ORDER BY 1")] == ok
    assert _q(research, "SELECT count(*) FROM stage_results WHERE status = 'failed'")[0][0] == 0
    assert _q(research, "SELECT decision FROM series_decisions")[0][0] == "exclude"
    assert _q(research, f"SELECT count(*) FROM training_slices WHERE series_id = '{sid}'")[0][0] == 0

    # a catalog older than the metrics: no rows, no thumbnails; the next run (every exam done and
    # skipped) measures them from the NIfTI files, to the same values as the convert stage did
    before = dict(_q(research, "SELECT series_id, snr FROM series_quality"))
    write_table(research, SERIES_QUALITY, SERIES_QUALITY.schema.empty_table())
    build_research_db(research)
    for png in (research / "qc" / "thumbs").glob("*.png"):
        png.unlink()
    res = run_curation(_params(archive, out))
    assert res["stages"]["convert"] == {"skipped": 1}
    after = dict(_q(research, "SELECT series_id, snr FROM series_quality"))
    assert after.keys() == before.keys() and all(after[k] == pytest.approx(before[k], rel=1e-9) for k in before)
    assert all((research / "qc" / "thumbs" / f"{k}.png").is_file() for k in after)
