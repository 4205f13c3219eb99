"""Test session set-up: an isolated MRIFOUNDRY_HOME and Prefect environment (from
deploy/env.sh, the same file the Makefile uses), a real Prefect server on a free
loopback port started on demand, and the embedded sample archive generated once."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _session_env() -> dict[str, str]:
    home = tempfile.mkdtemp(prefix="mrifoundry-test-")
    env = dict(os.environ, MRIFOUNDRY_HOME=home, MRIFOUNDRY_PREFECT_PORT=str(_free_port()),
               MRIFOUNDRY_REPO=str(REPO))
    for k in ("MRIFOUNDRY_ARCHIVE", "MRIFOUNDRY_REPORTS", "MRIFOUNDRY_OUT", "MRIFOUNDRY_SALT"):
        env.pop(k, None)
    out = subprocess.run(["bash", "-c", "source deploy/env.sh && env -0"], cwd=REPO, env=env,
                         capture_output=True, check=True).stdout
    return dict(kv.split("=", 1) for kv in out.decode().split("\0") if "=" in kv)


# must happen before prefect is imported by any test module
os.environ.clear()
os.environ.update(_session_env())
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "90"


@pytest.fixture(scope="session")
def test_home() -> Path:
    return Path(os.environ["MRIFOUNDRY_HOME"])


@pytest.fixture(scope="session")
def prefect_server(test_home):
    """A real Prefect server (deploy/server.sh) on 127.0.0.1, stopped by PID at the end."""
    subprocess.run([str(REPO / "deploy" / "server.sh"), "start"], cwd=REPO, check=True, timeout=180)
    yield os.environ["PREFECT_API_URL"]
    try:  # send buffered log records while the server is still up
        from prefect.logging.handlers import APILogWorker
        APILogWorker.drain_all(timeout=15)
    except Exception:  # noqa: BLE001
        pass
    subprocess.run([str(REPO / "deploy" / "worker.sh"), "stop"], cwd=REPO, check=False, timeout=60)
    subprocess.run([str(REPO / "deploy" / "server.sh"), "stop"], cwd=REPO, check=False, timeout=60)


@pytest.fixture(scope="session")
def generated_sample(test_home) -> tuple[Path, dict, float]:
    """The embedded sample archive (seed 0), generated once per session where the flows
    expect it: (folder, manifest, seconds it took)."""
    import time
    from mrifoundry.sample import generate_sample
    from mrifoundry.settings import Settings
    out = Settings().sample_dir
    t0 = time.perf_counter()
    manifest = generate_sample(out, seed=0, workers=2)
    return out, manifest, time.perf_counter() - t0


@pytest.fixture(scope="session")
def sample(generated_sample) -> Path:
    return generated_sample[0]


@pytest.fixture(scope="session")
def manifest(sample) -> dict:
    import json
    return json.loads((sample / "manifest.json").read_text())


def pytest_sessionfinish(session, exitstatus):
    home = os.environ.get("MRIFOUNDRY_HOME", "")
    if home.startswith(tempfile.gettempdir()) and "mrifoundry-test-" in home and not os.environ.get("KEEP_TEST_HOME"):
        subprocess.run([str(REPO / "deploy" / "worker.sh"), "stop"], cwd=REPO, capture_output=True)
        subprocess.run([str(REPO / "deploy" / "server.sh"), "stop"], cwd=REPO, capture_output=True)
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def small_catalog(manifest, sample, tmp_path_factory) -> Path:
    """Research root of a small curated catalog — one brain and two body exams, PNG only,
    curated by the plain stage functions (no Prefect) — for the model and evaluation tests."""
    from mrifoundry.params import CurateParams
    from mrifoundry.tasks.curation.runner import run_curation
    from mrifoundry.tasks.curation.workspace import Workspace
    from tests.flows.helpers import copy_exams
    clean = [e for e in manifest["exams"] if e.get("in_archive") and e.get("study_dir")
             and not any(s.get("defect") for s in e["series"])]
    picked, patients = [], set()
    # one brain (real MNI anatomy) and two body exams, three different patients
    for want_brain in (True, False, False):
        e = next(e for e in clean if (str(e.get("body_part")).lower() == "brain") == want_brain
                 and e["patient_mrn"] not in patients and e not in picked)
        picked.append(e)
        patients.add(e["patient_mrn"])
    archive, out = tmp_path_factory.mktemp("small-archive"), tmp_path_factory.mktemp("small-out")
    copy_exams(manifest, sample, archive, lambda e: e in picked)
    run_curation(CurateParams(archive=str(archive), reports=None, out=str(out), workers=1, write_nifti=False,
                              phi_audit=False))
    return Workspace(out).research


@pytest.fixture(scope="session")
def volume_catalog(manifest, sample, tmp_path_factory) -> Path:
    """Research root of a small curated catalog with NIfTI volumes — two brain exams (T1, T2,
    FLAIR) and one body exam at 3 mm (small volumes, fast tests) — for the volume recipes."""
    from mrifoundry.params import CurateParams
    from mrifoundry.tasks.curation.runner import run_curation
    from mrifoundry.tasks.curation.workspace import Workspace
    from tests.flows.helpers import clean_exams, copy_exams
    picked = clean_exams(manifest, ("BRAIN", "BRAIN", "KNEE"))
    archive, out = tmp_path_factory.mktemp("volume-archive"), tmp_path_factory.mktemp("volume-out")
    copy_exams(manifest, sample, archive, lambda e: e in picked)
    run_curation(CurateParams(archive=str(archive), reports=None, out=str(out), workers=1, write_png=False,
                              voxel_size_mm=3.0, phi_audit=False))
    return Workspace(out).research


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """Tiny models on 2 cores shared with a Prefect server: one intra-op thread is faster
    (measured 1.4 s vs 37 s for the same few-shot run on a loaded box) and deterministic."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
