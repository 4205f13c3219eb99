"""A full disk: OUT on a 6 MB tmpfs that fills up mid-run. The command stops with one clear line
and exit code 28, leaves no temp file, and after the disk is enlarged a re-run (``--rerun failed``,
the documented way) finishes every exam with no duplicate row. Needs root to mount a tmpfs; skipped
with the reason where mounting is impossible."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mrifoundry.catalog.views import connect
from mrifoundry import ids
from mrifoundry.errors import EXIT_DISK_FULL
from mrifoundry.settings import load_salt
from tests.badinput.writers import Study

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
REPO = Path(__file__).resolve().parents[2]
N_EXAMS = 15


def _archive(root: Path) -> list[str]:
    accessions = []
    for i in range(N_EXAMS):
        st = Study(root / f"exam{i:02d}", f"full{i}", 500 + i)
        st.series("A", rows=96, cols=96)
        st.series("B", rows=96, cols=96, number=2, description="T1 SE AX")
        accessions.append(st.accession)
    return accessions


def _curate(archive: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mrifoundry.flows.cli", "curate", "--archive", str(archive), "--out", str(out),
                           "--no-phi-audit", *extra], cwd=REPO, capture_output=True, text=True, timeout=600)


def _temp_files(out: Path) -> list[str]:
    return [str(p.relative_to(out)) for p in out.rglob(".*") if any(m in p.name for m in (".tmp", ".old", ".build"))]


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "out"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a 6 MB tmpfs here ({r.stderr.strip()}): the full-disk test needs root")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_stops_cleanly_and_a_rerun_finishes(prefect_server, small_disk, tmp_path):
    archive = tmp_path / "archive"
    accessions = _archive(archive)
    out = small_disk
    first = _curate(archive, out)
    assert first.returncode == EXIT_DISK_FULL, first.stdout[-2000:] + first.stderr[-2000:]
    assert "Traceback" not in first.stderr + first.stdout
    assert "no space left" in first.stderr.lower()
    assert not _temp_files(out)

    subprocess.run(["mount", "-o", "remount,size=256m", str(out)], check=True)
    second = _curate(archive, out, "--rerun", "failed")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert not _temp_files(out)

    salt = load_salt(out)
    con = connect(out / "research")
    try:
        exams = {r[0] for r in con.execute("SELECT exam_id FROM exams").fetchall()}
        dup_series = con.execute("SELECT COUNT(*) - COUNT(DISTINCT series_id) FROM series").fetchone()[0]
        dup_slices = con.execute("SELECT COUNT(*) - COUNT(DISTINCT slice_id) FROM slices").fetchone()[0]
        ok = con.execute("SELECT COUNT(*) FROM series WHERE status = 'ok'").fetchone()[0]
        failed = con.execute("SELECT COUNT(*) FROM stage_results WHERE status = 'failed'").fetchone()[0]
    finally:
        con.close()
    assert exams == {ids.exam_id(a, salt) for a in accessions}
    assert (dup_series, dup_slices, failed) == (0, 0, 0)
    assert ok == 2 * N_EXAMS
    # a third run has nothing left to do
    third = _curate(archive, out, "--rerun", "failed")
    assert third.returncode == 0 and '"exams_with_failures": 0' in third.stdout
    os.sync()
