"""The user's first try, through the real Prefect flow: `mrifoundry curate` on the whole DICOM
test folder of a wheel (non-DICOM files, DICOMDIR, CT/RT/US objects, gzip, truncated copies,
mosaics, enhanced MR) ends Completed, with the PHI audit on and passing."""
from __future__ import annotations

import shutil

import pytest

from mrifoundry.catalog.views import connect
from bench.vendor_corpus import source_root

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]


@pytest.mark.parametrize("source, sub", [("pydicom", ""), ("nibabel", "nicom/tests/data")])
def test_whole_wheel_folder_curates_with_the_audit(prefect_server, tmp_path, source, sub):
    from mrifoundry.flows.curate import curate
    root = source_root(source)
    archive = tmp_path / "archive"
    shutil.copytree(root / sub if sub else root, archive)
    state = curate(archive=str(archive), reports=None, out=str(tmp_path / "out"), return_state=True)
    assert state.is_completed(), state.message     # the run ends with the audit (phi_audit=True)
    con = connect(tmp_path / "out" / "research")
    try:
        failed = con.execute("SELECT count(*) FROM stage_results WHERE status = 'failed'").fetchone()[0]
        unexplained = con.execute("SELECT count(*) FROM series WHERE status <> 'ok' AND reason IS NULL").fetchone()[0]
        n_series = con.execute("SELECT count(*) FROM series").fetchone()[0]
    finally:
        con.close()
    assert failed == 0 and unexplained == 0 and n_series > 0
    # and the audit the flow ran agrees when run again by hand (a leak would fail it, and the flow)
    from mrifoundry.tasks.curation.audit.phi_audit import audit_output
    assert audit_output(tmp_path / "out", log_dirs=[]).ok
