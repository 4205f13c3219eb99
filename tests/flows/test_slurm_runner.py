"""``runner=slurm`` against a real SLURM cluster: Debian's slurm-wlm and munge, installed with
apt when missing and started by deploy/slurm.sh (one node on 127.0.0.1, its own ports, state
and munge key), the curate flow's Dask workers as SLURM jobs (dask-jobqueue's SLURMCluster from
deploy/dask/slurm-local.yaml, chosen through MRIFOUNDRY_SLURM_CLUSTER as a site would), the same
catalog as the thread runner, and a worker job cancelled mid-run (scancel) with the run still
finishing: nothing lost, nothing done twice. Everything is stopped by PID at the end."""
from __future__ import annotations

import os
import re
import shutil
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from mrifoundry.catalog.views import connect
from tests.flows.helpers import copy_exams

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "slurm.sh"
LOCAL_YAML = REPO / "deploy" / "dask" / "slurm-local.yaml"
SALT = "slurm-runner-test-salt"
N_EXAMS = 6


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _slurm_available_or_skip() -> None:
    """SLURM installed, or apt-get there to install it; else one line (a failure under CI)."""
    if shutil.which("slurmctld", path="/usr/sbin:/usr/bin:/sbin:/bin") and shutil.which("sbatch"):
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        return
    msg = "SLURM is not installed and apt-get (as root) is unavailable: apt-get install slurm-wlm munge"
    if os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


class Slurm:
    """The running cluster: its config, partition and the job-completion log."""

    def __init__(self, home: Path):
        self.home = home
        self.conf = home / "etc" / "slurm.conf"
        self.jobcomp = home / "log" / "jobcomp.txt"

    def env(self, **extra: str) -> dict[str, str]:
        return dict(os.environ, SLURM_CONF=str(self.conf), **extra)

    def script(self, *args: str, timeout: int = 600) -> str:
        r = subprocess.run([str(SCRIPT), *args], env=self.env(SLURM_HOME=str(self.home)), capture_output=True,
                           text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"deploy/slurm.sh {args[0]} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r.stdout

    def squeue(self) -> list[tuple[str, str, str]]:
        """(job id, state, name) of every job in the queue."""
        r = subprocess.run(["squeue", "-h", "-o", "%i %T %j"], env=self.env(), capture_output=True, text=True,
                           timeout=30)
        return [tuple(line.split()[:3]) for line in r.stdout.splitlines() if len(line.split()) >= 3]

    def finished_jobs(self) -> dict[str, dict[str, str]]:
        """Job id → fields of its line in the job-completion log (JobState, Name, NodeList …)."""
        jobs = {}
        if self.jobcomp.exists():
            for line in self.jobcomp.read_text().splitlines():
                f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
                jobs[f["JobId"]] = f
        return jobs


class QueueWatch(threading.Thread):
    """Polls squeue while a run goes on: every job id seen RUNNING, by name."""

    def __init__(self, slurm: Slurm):
        super().__init__(daemon=True)
        self.slurm, self.running, self.stop = slurm, {}, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for jid, state, name in self.slurm.squeue():
                if state == "RUNNING":
                    self.running[jid] = name
            self.stop.wait(0.5)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.join(10)


@pytest.fixture(scope="module")
def slurm(test_home):
    """A one-node SLURM cluster (deploy/slurm.sh) on free loopback ports, stopped by PID at the end."""
    _slurm_available_or_skip()
    cluster = Slurm(test_home / "slurm")
    t0 = time.perf_counter()
    out = cluster.script("start", str(_free_port()), str(_free_port()))
    print(f"slurm up in {time.perf_counter() - t0:.1f} s: {out.strip().splitlines()[-1]}")
    try:
        yield cluster
    finally:
        cluster.script("stop", timeout=120)


@pytest.fixture(scope="module")
def archive(sample, manifest, tmp_path_factory):
    """A few clean exams of the embedded sample (single-timepoint series, not brain: small volumes)."""
    clean = [e for e in manifest["exams"] if e.get("in_archive") and e.get("body_part") not in (None, "brain")
             and all(s["expected_status"] == "ok" and s["n_timepoints"] in (None, 1) for s in e["series"])]
    dest = tmp_path_factory.mktemp("slurm-archive")
    exams = copy_exams(manifest, sample, dest, lambda e: e in clean[:N_EXAMS])
    assert len(exams) == N_EXAMS
    return dest


def _out(root: Path, name: str) -> Path:
    out = root / name
    (out / "restricted").mkdir(parents=True)
    (out / "restricted" / "salt").write_text(SALT)  # same opaque ids in every output: catalogs compare
    return out


def _catalog(out: Path) -> dict:
    con = connect(out / "research")
    snap = {
        "exams": con.execute("SELECT exam_id, n_series, n_series_ok, n_slices FROM exams ORDER BY 1").fetchall(),
        "series": con.execute("SELECT series_id, status, reason, n_slices, nifti_shape FROM series "
                              "ORDER BY 1").fetchall(),
        "slices": con.execute("SELECT slice_id FROM slices ORDER BY 1").fetchall(),
        "stages": con.execute("SELECT item_id, stage, status, reason FROM stage_results ORDER BY 1, 2").fetchall(),
    }
    con.close()
    return snap


def _ledger(out: Path) -> dict[tuple[str, str], tuple[str, int]]:
    con = sqlite3.connect(out / "state" / "ledger.sqlite")
    rows = {(i, s): (st, a) for i, s, st, a in con.execute("SELECT item_id, stage, status, attempt FROM stage_results")}
    con.close()
    return rows


def _exams_done(out: Path) -> set[str]:
    ledger = out / "state" / "ledger.sqlite"
    if not ledger.exists():
        return set()
    con = sqlite3.connect(ledger)
    try:
        return {r[0] for r in con.execute("SELECT item_id FROM stage_results WHERE stage='catalog' AND status='done' "
                                          "AND item_id = exam_id")}
    except sqlite3.OperationalError:   # the file exists a moment before its table
        return set()
    finally:
        con.close()


def _exams_in_job_logs(logs: Path, job_ids: set[str]) -> set[str]:
    """Exams that went through all five stages inside the given SLURM jobs: the per-exam line
    of the group task (``exams-…``), read from the Dask workers' job logs (``dask-worker-JOBID.err``)."""
    names = set()
    for jid in job_ids:
        log = logs / f"dask-worker-{jid}.err"
        if log.exists():
            names |= set(re.findall(r"Task run 'exams-[^']+' - ([0-9a-z]+): retrieve done, deid done, "
                                    r"continuity done, convert done, catalog done", log.read_text(errors="replace")))
    return names


@pytest.fixture(scope="module")
def threads_run(prefect_server, archive, tmp_path_factory):
    from mrifoundry.flows.curate import curate
    out = _out(tmp_path_factory.mktemp("slurm-threads"), "threads")
    t0 = time.perf_counter()
    assert curate(archive=str(archive), out=str(out), return_state=True).is_completed()
    print(f"curate on threads: {time.perf_counter() - t0:.1f} s")
    return out


@pytest.fixture
def site_env(slurm, monkeypatch):
    """What a site sets for the Prefect worker: SLURM_CONF for sbatch/squeue/scancel and its cluster YAML."""
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    monkeypatch.setenv("MRIFOUNDRY_SLURM_CLUSTER", str(LOCAL_YAML))
    monkeypatch.setenv("PREFECT_LOGGING_LEVEL", "INFO")   # the jobs' logs name each task run they finished


def test_curate_on_slurm_gives_the_threads_catalog(slurm, site_env, threads_run, archive, test_home, tmp_path):
    from mrifoundry.flows.curate import curate
    out = _out(tmp_path, "slurm")
    before = set(slurm.finished_jobs())
    t0 = time.perf_counter()
    with QueueWatch(slurm) as watch:
        state = curate(archive=str(archive), out=str(out), runner="slurm", return_state=True)
    print(f"curate on slurm: {time.perf_counter() - t0:.1f} s, jobs {sorted(watch.running)}")
    assert state.is_completed(), state.message
    # the Dask workers were SLURM jobs: seen running in squeue, then ended by the cluster's close
    jobs = {j for j, name in watch.running.items() if name == "dask-worker"}
    assert len(jobs) >= 2, watch.running
    deadline = time.time() + 60
    while not jobs <= set(slurm.finished_jobs()) and time.time() < deadline:
        time.sleep(0.5)
    done = slurm.finished_jobs()
    assert jobs <= set(done) - before, (jobs, sorted(done))
    assert {done[j]["NodeList"] for j in jobs} == {socket.gethostname().split(".")[0]}
    # every exam went through its five stages inside one of those jobs
    exams = {r[0] for r in _catalog(out)["exams"]}
    ran = _exams_in_job_logs(test_home / "slurm" / "dask-logs", jobs)
    assert exams <= ran, (sorted(exams), sorted(ran))
    # the same catalog as the thread runner: exams, series ids and statuses, slices, stage outcomes
    assert _catalog(out) == _catalog(threads_run)
    assert len(exams) == N_EXAMS


def test_worker_job_cancelled_mid_run_loses_nothing_and_redoes_nothing(slurm, site_env, threads_run, archive,
                                                                       test_home, tmp_path):
    """scancel of one worker job while exams are in flight: Dask moves that worker's tasks to the
    other job, the cluster submits a replacement job, and the run finishes by itself; every
    (exam, stage) ran once (ledger attempt 1) and the catalog is the thread runner's.

    The replacement comes ``distributed.deploy.lost-worker-timeout`` after the loss (15 s by
    default, longer than what is left of this small run): 2 s here, so that it is seen."""
    out = _out(tmp_path, "scancel")
    cmd = [str(REPO / ".venv" / "bin" / "mrifoundry"), "curate", "--archive", str(archive), "--out", str(out),
           "--runner", "slurm"]
    env = dict(os.environ, DASK_DISTRIBUTED__DEPLOY__LOST_WORKER_TIMEOUT="2s")
    t0 = time.perf_counter()
    with QueueWatch(slurm) as watch:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        cancelled, done_before = None, set()
        try:
            deadline = time.time() + 240
            while time.time() < deadline and proc.poll() is None:
                done_before = _exams_done(out)
                running = [j for j, st, name in slurm.squeue() if st == "RUNNING" and name == "dask-worker"]
                if done_before and len(running) >= 2:
                    cancelled = running[0]
                    subprocess.run(["scancel", cancelled], env=slurm.env(), check=True, timeout=30)
                    break
                time.sleep(0.2)
            log, _ = proc.communicate(timeout=300)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    elapsed = time.perf_counter() - t0
    (tmp_path / "curate.log").write_text(log or "")
    print(f"scancel run: {elapsed:.1f} s, cancelled job {cancelled} with {len(done_before)} exam(s) done, "
          f"jobs {sorted(watch.running)}")
    for j in sorted(watch.running):   # what each job did, for the record (-s)
        log_j = test_home / "slurm" / "dask-logs" / f"dask-worker-{j}.err"
        states = re.findall(r"Finished in state (\w+)", log_j.read_text(errors="replace")) if log_j.exists() else []
        print(f"  job {j}: " + ", ".join(f"{k} {states.count(k)}" for k in sorted(set(states))))
    assert cancelled, "no moment with an exam done and two worker jobs running: " + log[-3000:]
    assert len(done_before) < N_EXAMS, "the cancel did not land mid-run"
    assert proc.returncode == 0, log[-4000:]
    jobs = slurm.finished_jobs()
    deadline = time.time() + 30
    while cancelled not in jobs and time.time() < deadline:
        time.sleep(0.5)
        jobs = slurm.finished_jobs()
    assert jobs[cancelled]["JobState"] == "CANCELLED", jobs.get(cancelled)
    # a replacement job ran after the cancel
    assert len({j for j, n in watch.running.items() if n == "dask-worker"}) >= 3, watch.running
    # nothing done twice: every (item, stage) of the ledger ran exactly once
    ledger = _ledger(out)
    assert ledger and {a for _, a in ledger.values()} == {1}, {k: v for k, v in ledger.items() if v[1] != 1}
    assert ledger == {k: (st, 1) for k, (st, _) in _ledger(threads_run).items()}
    # nothing lost: the thread runner's catalog, no duplicate slice, no temp file left
    snap = _catalog(out)
    assert snap == _catalog(threads_run)
    assert len({s[0] for s in snap["slices"]}) == len(snap["slices"]) > 0
    assert not [p for p in out.rglob(".*") if any(m in p.name for m in (".tmp", ".old", ".build"))]


def test_runner_slurm_reads_the_site_cluster_yaml(monkeypatch, tmp_path, test_home):
    """``runner=slurm``: the YAML named by MRIFOUNDRY_SLURM_CLUSTER, else the packaged one; ``{home}``
    expanded, ``$VAR`` left to the job's shell; a missing file is one clear ValueError."""
    from mrifoundry.flows.runners import DEPLOY, make_task_runner
    site = tmp_path / "site.yaml"
    site.write_text("cluster_class: dask_jobqueue.SLURMCluster\ncluster_kwargs:\n  queue: gpu\n"
                    "  log_directory: '{home}/dask'\n  local_directory: $TMPDIR\n"
                    "  job_script_prologue: ['source $VENV/bin/activate']\nadapt_kwargs: {minimum: 0, maximum: 3}\n")
    monkeypatch.setenv("MRIFOUNDRY_SLURM_CLUSTER", str(site))
    r = make_task_runner("slurm", 2)
    assert r.cluster_kwargs == {"queue": "gpu", "log_directory": f"{test_home}/dask", "local_directory": "$TMPDIR",
                                "job_script_prologue": ["source $VENV/bin/activate"]}
    assert r.adapt_kwargs == {"minimum": 0, "maximum": 3}
    assert make_task_runner(str(site), 2).cluster_kwargs == r.cluster_kwargs
    monkeypatch.setenv("MRIFOUNDRY_SLURM_CLUSTER", str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="missing.yaml not found.*MRIFOUNDRY_SLURM_CLUSTER"):
        make_task_runner("slurm", 2)
    monkeypatch.delenv("MRIFOUNDRY_SLURM_CLUSTER")
    packaged = make_task_runner("slurm", 2).cluster_kwargs
    assert packaged["queue"] == "cpu" and packaged["log_directory"] == f"{test_home}/logs/dask"
    assert "--lifetime" in packaged["worker_extra_args"] and (DEPLOY / "slurm-local.yaml").is_file()
