"""Failures are recorded and re-run alone: `prefect flow-run retry` and `rerun=failed`."""
from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path

import pytest

from mrifoundry.catalog.views import connect
from mrifoundry import ids
from mrifoundry.settings import load_salt
from tests.flows.helpers import copy_exams

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
REPO = Path(__file__).resolve().parents[2]


def _attempts(out: Path) -> dict:
    con = sqlite3.connect(out / "state" / "ledger.sqlite")
    rows = {(i, s): (st, a) for i, s, st, a in con.execute("SELECT item_id, stage, status, attempt FROM stage_results")}
    con.close()
    return rows


def _exam_of(out: Path, item_id: str) -> str | None:
    con = sqlite3.connect(out / "state" / "ledger.sqlite")
    row = con.execute("SELECT exam_id FROM stage_results WHERE item_id = ? LIMIT 1", (item_id,)).fetchone()
    con.close()
    return row[0] if row else None


def _counts(out: Path):
    con = connect(out / "research")
    r = con.execute("SELECT (SELECT COUNT(*) FROM exams), (SELECT COUNT(*) FROM series), (SELECT COUNT(*) FROM slices),"
                    " (SELECT COUNT(*) - COUNT(DISTINCT slice_id) FROM slices)").fetchone()
    con.close()
    return r


@pytest.fixture(scope="module")
def small_archive(sample, manifest, tmp_path_factory):
    archive = tmp_path_factory.mktemp("clean-archive")
    clean = [e for e in manifest["exams"] if e.get("in_archive") and e.get("body_part") not in (None, "brain")
             and all(s["expected_status"] == "ok" and s["n_timepoints"] in (None, 1) for s in e["series"])]
    exams = copy_exams(manifest, sample, archive, lambda e: e in clean[:3])
    assert len(exams) == 3
    return archive, exams


def _block(out: Path, exam: dict) -> Path:
    """Make the NIfTI folder of one exam impossible to create (a file stands in its place)."""
    eid = ids.exam_id(exam["accession_number"], load_salt(out))
    blocker = out / "research" / "nifti" / eid
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")
    return blocker


def test_prefect_retry_reexecutes_only_failed_tasks(prefect_server, small_archive, tmp_path):
    from mrifoundry.flows.curate import curate
    archive, exams = small_archive
    out = tmp_path / "out"
    (out / "restricted").mkdir(parents=True)
    blocker = _block(out, exams[0])
    state = curate(archive=str(archive), out=str(out), return_state=True)
    assert state.is_failed()
    before = _attempts(out)
    eid = blocker.name
    # every series of the exam failed to convert (its NIfTI folder cannot exist): the series fail,
    # the exam's stage is done, and its catalog rows say so; the Prefect task is Failed
    assert before[(eid, "convert")] == ("done", 1)
    assert {v for (i, s), v in before.items() if s == "convert" and i != eid and _exam_of(out, i) == eid} == \
        {("failed", 1)}
    assert before[(eid, "catalog")] == ("done", 1)
    blocker.unlink()
    flow_run_id = str(state.state_details.flow_run_id)
    r = subprocess.run([str(REPO / ".venv" / "bin" / "prefect"), "flow-run", "retry", flow_run_id,
                        "--entrypoint", "mrifoundry.flows.curate:curate"], cwd=REPO, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    after = _attempts(out)
    assert after[(eid, "convert")] == ("done", 2)
    assert after[(eid, "catalog")] == ("done", 2)    # redone: the convert before it was redone
    assert not [k for k, v in after.items() if v[0] == "failed"]
    # every other exam's stages ran exactly once: the retry did not redo them
    for (item, stage), (st, n) in before.items():
        if item != eid and stage in ("retrieve", "deid", "continuity", "catalog") and item.startswith("e"):
            assert after[(item, stage)] == (st, n), (item, stage)
    n_exams, n_series, n_slices, dups = _counts(out)
    assert n_exams == 3 and dups == 0


def test_rerun_failed_only(prefect_server, small_archive, tmp_path):
    from mrifoundry.flows.curate import curate
    archive, exams = small_archive
    out = tmp_path / "out"
    (out / "restricted").mkdir(parents=True)
    blocker = _block(out, exams[1])
    assert curate(archive=str(archive), out=str(out), return_state=True).is_failed()
    first = _counts(out)
    assert first[0] == 3    # the blocked exam is in the catalog, its series marked failed
    con = connect(out / "research")
    try:
        assert con.execute("SELECT n_series_ok FROM exams WHERE exam_id = ?", [blocker.name]).fetchone()[0] == 0
    finally:
        con.close()
    blocker.unlink()
    before = _attempts(out)
    state = curate(archive=str(archive), out=str(out), rerun="failed", return_state=True)
    assert state.is_completed(), state.message
    after = _attempts(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert {k[0] for k in changed if k[0].startswith("e")} == {blocker.name}
    assert _counts(out)[0] == 3 and _counts(out)[3] == 0
    # and a plain re-run now does nothing
    again = curate(archive=str(archive), out=str(out), return_state=True)
    assert again.is_completed() and _attempts(out) == after
