"""The Prefect server on PostgreSQL: deploy/postgres.sh (Debian's postgresql, installed with apt when
missing) and ``MRIFOUNDRY_PREFECT_DB=postgres deploy/server.sh start`` on free loopback ports under a
MRIFOUNDRY_HOME of their own (not the session's SQLite server), the curate deployment run by a
process worker on a few exams of the embedded sample, the flow run and its task runs read back from
PostgreSQL's own tables with psql, no SQLite database anywhere, and both servers stopped by PID."""
from __future__ import annotations

import csv
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.flows.helpers import copy_exams

pytestmark = [pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
PREFECT = str(REPO / ".venv" / "bin" / "prefect")
N_EXAMS = 3
PER_TASK = 2     # exams per Prefect task: a group of 2 and a group of 1
FACIAL = re.compile(r"\b(BRAIN|HEAD|FACE|FACIAL|NECK|ORBITS?|IACS?|INTERNAL AUDITORY|PITUITARY|SELLA|SINUS(ES)?|TMJ)\b")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pick(manifest: dict) -> list[dict]:
    """N_EXAMS defect-free exams the curate-demo parameters select (2016-2020, not facial), one per patient."""
    picked, patients = [], set()
    for e in manifest["exams"]:
        if (e.get("in_archive") and e.get("study_dir") and e.get("accession_number")
                and not any(s.get("defect") for s in e["series"]) and not e.get("facial")
                and "2016" <= e["report_date"][:4] <= "2020" and e["patient_mrn"] not in patients):
            picked.append(e)
            patients.add(e["patient_mrn"])
        if len(picked) == N_EXAMS:
            return picked
    raise AssertionError("the sample has too few clean exams")


def _reports(sample: Path, exams: list[dict], dest: Path) -> Path:
    with open(sample / "reports.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    want = {e["accession_number"] for e in exams}
    with open(dest, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(r for r in rows if r["accession_number"] in want)
    return dest


class Stack:
    """deploy/*.sh with this stack's environment (deploy/env.sh sourced on top of it)."""

    def __init__(self, home: Path):
        self.home = home
        base = dict(os.environ, MRIFOUNDRY_HOME=str(home), MRIFOUNDRY_REPO=str(REPO),
                    MRIFOUNDRY_PREFECT_PORT=str(_free_port()), MRIFOUNDRY_PG_PORT=str(_free_port()),
                    MRIFOUNDRY_PREFECT_DB="postgres")
        out = subprocess.run(["bash", "-c", "source deploy/env.sh && env -0"], cwd=REPO, env=base,
                             capture_output=True, check=True).stdout
        self.env = dict(kv.split("=", 1) for kv in out.decode().split("\0") if "=" in kv)
        self.pg = home / "postgres"

    def sh(self, script: str, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(REPO / "deploy" / script), *args], cwd=REPO, env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"deploy/{script} {' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        return r

    def psql(self, sql: str) -> list[list[str]]:
        """Rows of ``sql`` from psql itself (the prefect role over TCP, password from the 0600 file)."""
        r = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-F", "|", "-h", "127.0.0.1",
                            "-p", self.env["MRIFOUNDRY_PG_PORT"], "-U", "prefect", "-d", "prefect", "-c", sql],
                           env=dict(self.env, PGPASSWORD=(self.pg / "prefect.password").read_text().strip()),
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        return [line.split("|") for line in r.stdout.splitlines()]

    def pid(self, name: str) -> int:
        return int(Path(name).read_text())

    def stop_all(self) -> None:
        for script in ("worker.sh", "server.sh", "postgres.sh"):
            self.sh(script, "stop", check=False, timeout=120)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _procs(field: int, value: int) -> set[int]:
    """PIDs of the live processes whose /proc stat field ``field`` (after the name; 1 = parent,
    2 = process group) equals ``value``."""
    pids = set()
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[field]) == value and fields[0] != "Z":
                pids.add(int(p.name))
    return pids


def _group(pgid: int) -> set[int]:
    """PIDs of the live processes in process group ``pgid``."""
    return _procs(2, pgid)


def _children(pid: int) -> set[int]:
    return _procs(1, pid)


@pytest.fixture(scope="module")
def stack(sample, manifest):
    # Debian's postgres user must reach HOME/postgres/data: mkdtemp makes 0700 folders
    home = Path(tempfile.mkdtemp(prefix="mrifoundry-pg-"))
    home.chmod(0o755)
    st = Stack(home)
    exams = _pick(manifest)
    archive = home / "archive"
    copy_exams(manifest, sample, archive, lambda e: e in exams)
    reports = _reports(sample, exams, home / "reports.csv")
    timings = {}
    try:
        t0 = time.perf_counter()
        st.sh("server.sh", "start", timeout=400)
        timings["postgres + server start"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        st.sh("worker.sh", "deploy", timeout=300)
        st.sh("worker.sh", "start", timeout=60)
        timings["deploy + worker start"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        r = subprocess.run([PREFECT, "deployment", "run", "curate/curate-demo", "-p", f"archive={archive}",
                            "-p", f"reports={reports}", "-p", f"out={home / 'out'}", "-p", f"exams_per_task={PER_TASK}", "--watch",
                            "--watch-timeout", "600"], cwd=REPO, env=st.env, capture_output=True, text=True,
                           timeout=700)
        timings["curate run"] = time.perf_counter() - t0
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", r.stdout).group(1)
        print("timings (s):", {k: round(v, 1) for k, v in timings.items()})
        yield st, run_id, exams
    finally:
        st.stop_all()
        shutil.rmtree(home, ignore_errors=True)


def test_the_curate_run_completed_in_postgres(stack):
    st, run_id, exams = stack
    (state, name), = st.psql(f"SELECT state_type, name FROM flow_run WHERE id = '{run_id}'")
    assert state == "COMPLETED", name
    # the deployment run and its subflow (curate-exams): their task runs, from PostgreSQL's tables
    rows = st.psql(f"""
        WITH RECURSIVE runs(id) AS (
            SELECT id FROM flow_run WHERE id = '{run_id}'
            UNION ALL
            SELECT f.id FROM flow_run f JOIN task_run t ON f.parent_task_run_id = t.id JOIN runs r ON t.flow_run_id = r.id)
        SELECT t.name, t.state_type FROM task_run t JOIN runs r ON t.flow_run_id = r.id""")
    groups = [(n, s) for n, s in rows if n.startswith("exams-")]
    assert len(groups) == -(-N_EXAMS // PER_TASK), rows     # one task run per group of PER_TASK exams
    assert {s for _, s in groups} == {"COMPLETED"}, groups
    # per exam, one log line with the five stages' outcomes (the UI's view of an exam inside a group)
    lines = [m for (m,) in st.psql(f"SELECT message FROM log WHERE message LIKE '%: retrieve %' AND "
                                   f"task_run_id IN (SELECT id FROM task_run WHERE name LIKE 'exams-%')")]
    per_exam = {m.split(":", 1)[0]: m for m in lines}
    assert len(per_exam) == N_EXAMS == len(lines), lines
    for m in lines:
        assert re.search(r": retrieve done, deid done, continuity done, convert done, catalog done \([0-9.]+ s\)$",
                         m), m
    # progress counted per exam: the last progress line says all of them
    progress = [m for (m,) in st.psql(f"SELECT message FROM log WHERE message LIKE 'curate: %/% exams%' "
                                      f"ORDER BY timestamp")]
    assert progress and progress[-1].startswith(f"curate: {N_EXAMS}/{N_EXAMS} exams"), progress
    (size,), = st.psql("SELECT pg_size_pretty(pg_database_size('prefect'))")
    print(f"prefect database: {size}, {len(rows)} task runs of the run")
    # the catalog holds the exams the run reports
    from mrifoundry.catalog.views import connect
    con = connect(st.home / "out" / "research")
    n = con.execute("SELECT COUNT(*) FROM exams").fetchone()[0]
    con.close()
    assert n == N_EXAMS


def test_no_sqlite_and_the_server_talks_to_postgres(stack):
    st, run_id, _ = stack
    assert not [p for p in st.home.rglob("*") if p.name.startswith("prefect.db")]
    # no SQLite database but the curate run's own (ledger, pseudonyms) under OUT
    sqlite = [p for p in st.home.rglob("*") if p.is_file() and p.open("rb").read(16) == b"SQLite format 3\0"]
    assert sqlite and all(p.is_relative_to(st.home / "out") for p in sqlite), sqlite
    (n,), = st.psql("SELECT count(*) FROM pg_stat_activity WHERE datname = 'prefect' AND usename = 'prefect' "
                    "AND pid <> pg_backend_pid()")
    assert int(n) >= 1, "the Prefect server holds no connection to PostgreSQL"
    # the API answers from the same rows
    r = subprocess.run([PREFECT, "flow-run", "inspect", run_id], cwd=REPO, env=st.env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "COMPLETED" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]


def test_postgres_is_private_and_its_password_stays_in_its_file(stack):
    st, _, _ = stack
    assert st.psql("SHOW listen_addresses") == [["127.0.0.1"]]
    assert st.psql("SHOW port") == [[st.env["MRIFOUNDRY_PG_PORT"]]]
    pw_file = st.pg / "prefect.password"
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    pw = pw_file.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{48}", pw)
    for log in (st.home / "logs").glob("*.log"):
        assert pw not in log.read_text(errors="replace"), log
    data = st.pg / "data"
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    if os.geteuid() == 0:  # postgres refuses root: the cluster is the postgres user's
        import pwd
        assert pwd.getpwuid(data.stat().st_uid).pw_name == "postgres"
        assert pwd.getpwuid(os.stat(f"/proc/{st.pid(st.pg / 'postgres.pid')}").st_uid).pw_name == "postgres"
    # a wrong password is refused
    r = subprocess.run(["psql", "-X", "-h", "127.0.0.1", "-p", st.env["MRIFOUNDRY_PG_PORT"], "-U", "prefect",
                        "-d", "prefect", "-c", "SELECT 1"], env=dict(st.env, PGPASSWORD="wrong"),
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "password authentication failed" in r.stderr, r.stderr


def test_backup_dumps_the_flow_runs(stack, tmp_path):
    st, _, _ = stack
    dump = tmp_path / "prefect.dump"
    st.sh("postgres.sh", "backup", str(dump), timeout=120)
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert re.search(r"TABLE DATA public flow_run ", listing.stdout) and "TABLE DATA public task_run " in listing.stdout


def test_stop_by_pid_ends_both_servers(stack):
    st, _, _ = stack
    server = st.pid(st.home / "run" / "server.pid")
    postmaster = st.pid(st.pg / "postgres.pid")
    assert server != postmaster
    assert int((st.pg / "data" / "postmaster.pid").read_text().split()[0]) == postmaster
    server_group, backends = _group(server), _children(postmaster)
    assert server_group and backends  # uvicorn under the server; checkpointer, walwriter … under postgres
    t0 = time.perf_counter()
    st.sh("worker.sh", "stop")
    t1 = time.perf_counter()
    r = st.sh("server.sh", "stop", timeout=120)
    t2 = time.perf_counter()
    assert "prefect server stopped" in r.stdout and "postgres stopped" in r.stdout, r.stdout
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in server_group | backends | {postmaster}):
        time.sleep(0.2)
    print(f"stop: worker {t1 - t0:.1f} s, server + postgres {t2 - t1:.1f} s, then {time.perf_counter() - t2:.1f} s")
    assert not [p for p in server_group | backends | {postmaster} if _alive(p)]
    assert not (st.pg / "postgres.pid").exists() and not (st.home / "run" / "server.pid").exists()
    assert not (st.pg / "data" / "postmaster.pid").exists()  # a clean shutdown, not a kill
    assert st.sh("postgres.sh", "status", check=False).returncode == 1
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", int(st.env["MRIFOUNDRY_PG_PORT"]))) != 0
