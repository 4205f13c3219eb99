"""Crash safety: SIGKILL mid-run, out of space while writing, two runs on one output,
and the Dask runner giving the same catalog as the thread runner."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import duckdb
import nibabel as nib
import pydicom
import pytest
from PIL import Image

from mrifoundry.catalog.views import connect
from mrifoundry import ids
from tests.flows.helpers import copy_exams

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
REPO = Path(__file__).resolve().parents[2]
SALT = "crash-safety-test-salt"


@pytest.fixture(scope="module")
def archive(sample, manifest, tmp_path_factory):
    dest = tmp_path_factory.mktemp("crash-archive")
    clean = [e for e in manifest["exams"] if e.get("in_archive") and e.get("body_part") not in (None, "brain")
             and all(s["expected_status"] == "ok" for s in e["series"])][:5]
    defect = [e for e in manifest["exams"] if any(s.get("defect") in ("missing_slice", "dce_slice_major")
                                                  for s in e["series"])]
    exams = copy_exams(manifest, sample, dest, lambda e: e in clean + defect)
    return dest, exams


def _out(tmp_path: Path, name: str) -> Path:
    out = tmp_path / name
    (out / "restricted").mkdir(parents=True)
    (out / "restricted" / "salt").write_text(SALT)  # same ids across outputs, to compare catalogs
    return out


def _snapshot(out: Path) -> dict:
    con = connect(out / "research")
    snap = {
        "exams": con.execute("SELECT exam_id, patient_id, n_series, n_series_ok, n_slices FROM exams "
                             "ORDER BY 1").fetchall(),
        "series": con.execute("SELECT series_id, status, reason, n_slices, n_timepoints, nifti_shape "
                              "FROM series ORDER BY 1").fetchall(),
        "slices": con.execute("SELECT slice_id, min_value, max_value, width, height FROM slices ORDER BY 1").fetchall(),
    }
    con.close()
    return snap


def _attempts(out: Path) -> dict:
    con = sqlite3.connect(out / "state" / "ledger.sqlite")
    rows = {(i, s): (st, a) for i, s, st, a in con.execute("SELECT item_id, stage, status, attempt FROM stage_results")}
    con.close()
    return rows


def _all_outputs_valid(research: Path) -> int:
    """Every output under its final name opens; returns how many were checked."""
    n = 0
    for p in research.rglob("*"):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(research).parts):
            continue
        if p.suffix == ".png":
            Image.open(p).load()
        elif p.name.endswith(".nii.gz"):
            nib.load(p).get_fdata()
        elif p.suffix == ".dcm":
            pydicom.dcmread(p)
        elif p.suffix == ".parquet":
            duckdb.sql(f"SELECT COUNT(*) FROM read_parquet('{p}')").fetchall()
        n += 1
    return n


def test_dask_runner_with_two_workers_gives_the_same_catalog(prefect_server, archive, tmp_path):
    from mrifoundry.flows.curate import curate
    src, _ = archive
    a, b = _out(tmp_path, "threads"), _out(tmp_path, "dask")
    assert curate(archive=str(src), out=str(a), return_state=True).is_completed()
    assert curate(archive=str(src), out=str(b), runner="dask", workers=2, return_state=True).is_completed()
    sa, sb = _snapshot(a), _snapshot(b)
    assert sa == sb and len(sa["slices"]) > 100


def test_sigkill_mid_run_loses_nothing_and_redoes_nothing(prefect_server, archive, tmp_path):
    src, exams = archive
    out = _out(tmp_path, "killed")
    cmd = [str(REPO / ".venv" / "bin" / "mrifoundry"), "curate", "--archive", str(src), "--out", str(out),
           "--workers", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ledger = out / "state" / "ledger.sqlite"
    deadline = time.time() + 300
    done_before: set[str] = set()
    while time.time() < deadline:
        time.sleep(0.5)
        if ledger.exists():
            con = sqlite3.connect(ledger)
            try:
                done_before = {r[0] for r in con.execute(
                    "SELECT item_id FROM stage_results WHERE stage='catalog' AND status='done'")}
            except sqlite3.OperationalError:
                continue  # the file exists a moment before the ledger creates its table
            finally:
                con.close()
            if len(done_before) >= 2:
                break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(done_before) < len(exams), "kill did not land mid-run"
    assert _all_outputs_valid(out / "research") > 0  # no half-written file under a final name
    before = _attempts(out)
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    after = _attempts(out)
    for (item, stage), v in before.items():
        if item in done_before:
            assert after[(item, stage)] == v, (item, stage)  # finished exams were not redone
    snap = _snapshot(out)
    assert len(snap["exams"]) == len(exams)
    ids_ = [s[0] for s in snap["slices"]]
    assert len(ids_) == len(set(ids_)) == len(list((out / "research" / "png").rglob("*.png")))


def test_out_of_space_stops_the_run_cleanly_then_rerun(prefect_server, archive, tmp_path):
    """One exam's NIfTI folder is a 64 KiB tmpfs: its convert fails ``disk_full``, the run stops taking
    new work and ends with DiskFull (no temp file left); once space is back, ``rerun=failed`` finishes
    every exam, including those the stopped run never started."""
    from mrifoundry.flows.curate import curate
    from mrifoundry.errors import DiskFull
    src, exams = archive
    out = _out(tmp_path, "full")
    victim = ids.exam_id(exams[0]["accession_number"], SALT)
    mnt = out / "research" / "nifti" / victim
    mnt.mkdir(parents=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.decode().strip()}")
    try:
        state = curate(archive=str(src), out=str(out), workers=1, return_state=True)
        assert state.is_failed()
        with pytest.raises(DiskFull):
            state.result()
        row = _attempts(out)[(victim, "convert")]
        assert row == ("failed", 1)
        con = sqlite3.connect(out / "state" / "ledger.sqlite")
        reason = con.execute("SELECT reason FROM stage_results WHERE item_id=? AND stage='convert'",
                             (victim,)).fetchone()[0]
        con.close()
        assert reason == "disk_full"
        assert not [p for p in out.rglob(".*") if ".tmp" in p.name or ".old" in p.name]
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
    assert curate(archive=str(src), out=str(out), rerun="failed", return_state=True).is_completed()
    snap = _snapshot(out)
    assert len(snap["exams"]) == len(exams)
    assert len({s[0] for s in snap["slices"]}) == len(snap["slices"])
    assert _all_outputs_valid(out / "research") > 0


def test_second_run_on_the_same_output_refuses(prefect_server, archive, tmp_path):
    from mrifoundry.flows.curate import curate
    from mrifoundry.run_lock import RunLock
    src, _ = archive
    out = _out(tmp_path, "locked")
    with RunLock(out / "state"):
        state = curate(archive=str(src), out=str(out), return_state=True)
    assert state.is_failed() and "another curate run holds" in (state.message or "") + str(state.result(
        raise_on_failure=False))
    assert not (out / "research" / "catalog").exists()
