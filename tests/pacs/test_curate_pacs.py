"""The curate flow against Orthanc gives the same catalog as against a folder holding the same
exams; an accession the PACS does not know is rejected with accession_not_found."""
from __future__ import annotations

import csv
import secrets

import pytest

from mrifoundry.catalog.views import connect
from mrifoundry import ids
from tests.flows.helpers import copy_exams
from tests.pacs.conftest import free_port, start_orthanc

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
UNKNOWN = "9999999999"


def _reports(sample, exams, dest):
    """The sample's report rows of ``exams`` plus one for an accession no archive holds."""
    with open(sample / "reports.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    want = {e["accession_number"] for e in exams}
    keep = [r for r in rows if r["accession_number"] in want]
    ghost = dict(keep[0], accession_number=UNKNOWN, patient_mrn="00000001")
    with open(dest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(keep + [ghost])
    return dest


def _catalog(out):
    con = connect(out / "research")
    try:
        series = sorted(con.execute(
            "SELECT series_id, exam_id, status, reason, n_slices, transfer_syntax FROM series").fetchall())
        exams = sorted(con.execute("SELECT exam_id, n_series, n_series_ok, n_slices FROM exams").fetchall())
        slices = con.execute("SELECT COUNT(*) FROM slices").fetchone()[0]
        ledger = sorted(con.execute(
            "SELECT item_id, stage, status, reason FROM stage_results WHERE item_kind = 'exam'").fetchall())
    finally:
        con.close()
    return series, exams, slices, ledger


@pytest.fixture(scope="module")
def curated(prefect_server, sample, manifest, pacs_exams, tmp_path_factory):
    from mrifoundry.flows.curate import curate
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc-e2e"), sample, pacs_exams)
    try:
        folder = tmp_path_factory.mktemp("folder-archive")
        copy_exams(manifest, sample, folder, lambda e: e in pacs_exams)
        reports = _reports(sample, pacs_exams, tmp_path_factory.mktemp("reports") / "reports.csv")
        salt = secrets.token_hex(32)  # one salt for both outputs: same opaque ids
        outs = {}
        for name, archive in (("pacs", orthanc.url()), ("folder", str(folder))):
            out = tmp_path_factory.mktemp(f"out-{name}")
            (out / "restricted").mkdir()
            (out / "restricted" / "salt").write_text(salt)
            state = curate(archive=archive, reports=str(reports), out=str(out), n_per_protocol=50,
                           return_state=True)
            outs[name] = (out, state)
        yield outs, salt
    finally:
        orthanc.stop()


def test_flows_complete(curated):
    outs, _ = curated
    for name, (_, state) in outs.items():
        assert state.is_completed(), (name, state.message)


def test_pacs_catalog_equals_folder_catalog(curated, pacs_exams):
    outs, salt = curated
    pacs, folder = _catalog(outs["pacs"][0]), _catalog(outs["folder"][0])
    series, exams, slices, ledger = pacs
    assert len(exams) == len(pacs_exams) and slices > 0
    assert {s[2] for s in series} == {"ok", "rejected"}  # the defects are rejected, the rest kept
    assert pacs == folder


def test_unknown_accession_is_rejected_in_the_ledger(curated):
    outs, salt = curated
    ghost = ids.exam_id(UNKNOWN, salt)
    for out, _ in outs.values():
        ledger = _catalog(out)[3]
        assert (ghost, "retrieve", "rejected", "accession_not_found") in ledger


def test_run_retrieve_records_pacs_unreachable(curated, tmp_path):
    """The stage turns a PACS that is down into a failed ledger row with its reason."""
    from mrifoundry.params import CurateParams
    from mrifoundry.tasks.curation import stages as exam_pipeline
    from mrifoundry.tasks.curation.workspace import Workspace
    outs, salt = curated
    out = outs["pacs"][0]
    ws = Workspace(out)
    eid = next(r[0] for r in _catalog(out)[3] if r[1] == "retrieve" and r[2] == "done")
    params = CurateParams(archive=f"dicom://NOBODY@127.0.0.1:{free_port()}?retries=0", out=str(out),
                          rerun="all")
    outcome = exam_pipeline.run_retrieve(ws, params, eid)
    assert (outcome.status, outcome.reason) == ("failed", "pacs_unreachable")
    row = ws.ledger.get(eid, "retrieve")
    assert (row.status, row.reason) == ("failed", "pacs_unreachable")
