"""Quiet, private CLI runs: telemetry off and Prefect's temporary server off the console;
expected conditions end in one line on stderr and their exit code (mrifoundry/errors.py),
no traceback unless --debug."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import mrifoundry.flows.cli as cli
from mrifoundry.run_lock import OutputBusy, RunLock
from mrifoundry import errors
from mrifoundry.tasks.curation.audit.phi_audit import AuditReport, Hit, PhiLeakError

REPO = Path(__file__).resolve().parents[2]


def _one_line(capsys) -> str:
    cap = capsys.readouterr()
    assert cap.err.count("\n") == 1 and "Traceback" not in cap.err, cap.err
    return cap.err.strip()


def test_busy_output_is_one_line_without_prefect(tmp_path, capsys, monkeypatch):
    archive, out = tmp_path / "archive", tmp_path / "out"
    archive.mkdir()

    def no_server(*_):
        raise AssertionError("Prefect was started")
    monkeypatch.setattr(cli, "_prepare_prefect", no_server)
    with RunLock(out / "state"):
        rc = cli.main(["curate", "--archive", str(archive), "--out", str(out)])
    assert rc == errors.EXIT_BUSY
    assert _one_line(capsys).startswith("mrifoundry curate: another curate run holds this output folder")


def test_missing_input_is_usage(tmp_path, capsys):
    rc = cli.main(["curate", "--archive", str(tmp_path / "nope"), "--out", str(tmp_path / "out")])
    assert rc == errors.EXIT_USAGE
    assert "--archive not found" in _one_line(capsys)
    (tmp_path / "archive").mkdir()
    rc = cli.main(["curate", "--archive", str(tmp_path / "archive"), "--reports", str(tmp_path / "r.csv"),
                   "--out", str(tmp_path / "out")])
    assert rc == errors.EXIT_USAGE and "--reports not found" in _one_line(capsys)
    rc = cli.main(["sql", "SELECT 1", "--out", str(tmp_path / "out")])  # no catalog there
    assert rc == errors.EXIT_USAGE and "curate" in _one_line(capsys)


def _leak() -> PhiLeakError:
    return PhiLeakError(AuditReport(hits=[Hit("research/png/a.png", "tEXt", "name"),
                                          Hit("research/png/a.png", "zTXt", "mrn"),
                                          Hit("research/catalog/exams/exams.parquet", "col x", "mrn")]))


@pytest.mark.parametrize("exc, code, words", [
    (OutputBusy("another curate run holds this output folder"), errors.EXIT_BUSY, "another curate run"),
    (errors.DiskFull("catalog"), errors.EXIT_DISK_FULL, "no space left"),
    (OSError(28, "No space left on device", "/out/x.png"), errors.EXIT_DISK_FULL, "no space left"),
    (_leak(), errors.EXIT_PHI, "2 place(s)"),
    (RuntimeError("3 stage task(s) failed; see stage_results. Retry with `prefect flow-run retry` or rerun=failed."),
     errors.EXIT_FAILED_ITEMS, "3 stage task(s) failed"),
])
def test_expected_conditions(exc, code, words, tmp_path, capsys, monkeypatch):
    def verb(params, progress=None):
        raise exc
    monkeypatch.setattr(cli, "run_curate", verb)
    argv = ["curate", "--archive", str(tmp_path), "--out", str(tmp_path / "out")]
    assert cli.main(argv) == code
    line = _one_line(capsys)
    assert line.startswith("mrifoundry curate: ") and words in line
    if code == errors.EXIT_PHI:
        assert "phi-audit" in line  # where the report is
    # --debug (or MRIFOUNDRY_DEBUG=1) re-raises for the traceback
    with pytest.raises(type(exc)):
        cli.main(["--debug", *argv])
    monkeypatch.setenv("MRIFOUNDRY_DEBUG", "1")
    with pytest.raises(type(exc)):
        cli.main(argv)


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    def verb(params, progress=None):
        raise KeyError("bug")
    monkeypatch.setattr(cli, "run_curate", verb)
    with pytest.raises(KeyError):
        cli.main(["curate", "--archive", str(tmp_path), "--out", str(tmp_path / "out")])


def test_quiet_private_env_respects_the_user(monkeypatch):
    for k in cli.QUIET_PRIVATE_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "DEBUG")
    cli.quiet_private_env()
    assert os.environ["DO_NOT_TRACK"] == "1"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"
    assert os.environ["PREFECT_SERVER_LOGGING_LEVEL"] == "WARNING"
    assert os.environ["PREFECT_LOGGING_LEVEL"] == "DEBUG"


def test_telemetry_setting_names_exist():
    from prefect.settings import get_current_settings
    s = get_current_settings()
    assert hasattr(s.server, "analytics_enabled") and hasattr(s.server, "logging_level")
    assert hasattr(s.server.ephemeral, "startup_timeout_seconds")


def _user_env(tmp_path: Path) -> dict[str, str]:
    """A user's shell: no Prefect server configured, nothing of deploy/env.sh."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MRIFOUNDRY_")) and k != "DO_NOT_TRACK"}
    env.update(MRIFOUNDRY_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"),
               PYTHONPATH=str(REPO))
    return env


def test_cli_module_does_not_import_prefect(tmp_path):
    code = "import sys, mrifoundry.flows.cli; sys.exit('prefect' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_user_env(tmp_path), timeout=120).returncode == 0


@pytest.mark.parametrize("through", [[], ["--prefect"]], ids=["plain", "prefect"])
def test_curate_run_is_quiet(tmp_path, through):
    """A real run, by the plain runner (default) and through the flow with Prefect's temporary
    server (~15 s): one tiny exam, only the result on the console."""
    from tests.dicom_factory import write_series
    archive = tmp_path / "archive"
    write_series(archive / "study1" / "series1", n_slices=6, extra=dict(
        PatientID="MRN0001", PatientName="Doe^Jane", StudyDate="20180305", AccessionNumber="ACC0001",
        BodyPartExamined="BRAIN", StudyDescription="MRI BRAIN"))
    p = subprocess.run([sys.executable, "-m", "mrifoundry.flows.cli", "curate", "--archive", str(archive),
                        "--out", str(tmp_path / "out"), "--workers", "1", *through],
                       cwd=tmp_path, env=_user_env(tmp_path), capture_output=True, text=True, timeout=300)
    both = p.stdout + p.stderr
    assert p.returncode == 0, both[-3000:]
    for noise in ("Traceback", "telemetry", "database is locked", "Starting temporary server"):
        assert noise.lower() not in both.lower(), both[-3000:]
    assert p.stderr.strip() == "", p.stderr[-3000:]
    assert json.loads(p.stdout)["catalog"]["exams"] == 1
    # the flow's temporary server logs to its file, not the console; the plain runner starts none
    assert (tmp_path / "home" / "logs" / "prefect-server.log").exists() == bool(through)


def test_plain_curate_never_imports_prefect(tmp_path, monkeypatch):
    """The one-off CLI's default path: the plain runner, so no server and no Prefect import."""
    from tests.dicom_factory import write_series
    write_series(tmp_path / "archive" / "s", n_slices=6, extra=dict(PatientID="MRN0002", StudyDate="20180305"))
    code = ("import sys, mrifoundry.flows.cli as cli; rc = cli.main(['curate', '--archive', sys.argv[1], '--out', sys.argv[2], "
            "'--workers', '1']); sys.exit(rc or 10 * ('prefect' in sys.modules))")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path / "archive"), str(tmp_path / "out")], cwd=REPO,
                       env=_user_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert json.loads(p.stdout)["catalog"]["series"] == 1
    assert not (tmp_path / "home" / "logs" / "prefect-server.log").exists()
