"""The stack of the scale benchmark (bench/scale.py): PostgreSQL + a Prefect server + a process
worker on free loopback ports under a temp MRIFOUNDRY_HOME, started and stopped by PID through the
project's deploy/ scripts, and the /proc sampler of its processes (CPU-s and peak RSS by kind)."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO, PeriodicSampler

PREFECT = str(REPO / ".venv" / "bin" / "prefect")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Stack:
    """deploy/*.sh with a MRIFOUNDRY_HOME of its own (deploy/env.sh sourced on top of it)."""

    def __init__(self, home: Path):
        self.home = home
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MRIFOUNDRY_"))}
        base.update(MRIFOUNDRY_HOME=str(home), MRIFOUNDRY_REPO=str(REPO), MRIFOUNDRY_PREFECT_PORT=str(_free_port()),
                    MRIFOUNDRY_PG_PORT=str(_free_port()), MRIFOUNDRY_PREFECT_DB="postgres",
                    PREFECT_LOGGING_LEVEL="INFO")
        out = subprocess.run(["bash", "-c", "source deploy/env.sh && env -0"], cwd=REPO, env=base,
                             capture_output=True, check=True).stdout
        self.env = dict(kv.split("=", 1) for kv in out.decode().split("\0") if "=" in kv)
        self.env["PYTHONPATH"] = str(REPO)
        self.pg = home / "postgres"

    def sh(self, script: str, *args: str, timeout: float = 400, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run([str(REPO / "deploy" / script), *args], cwd=REPO, env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"deploy/{script} {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                               f"{r.stderr[-3000:]}")
        return r

    def psql(self, sql: str) -> list[list[str]]:
        r = subprocess.run(["psql", "-X", "-v", "ON_ERROR_STOP=1", "-At", "-F", "\t", "-h", "127.0.0.1",
                            "-p", self.env["MRIFOUNDRY_PG_PORT"], "-U", "prefect", "-d", "prefect", "-c", sql],
                           env=dict(self.env, PGPASSWORD=(self.pg / "prefect.password").read_text().strip()),
                           capture_output=True, text=True, timeout=120)
        if r.returncode:
            raise RuntimeError(f"psql failed: {r.stderr[-2000:]}")
        return [line.split("\t") for line in r.stdout.splitlines()]

    def pid(self, rel: str) -> int | None:
        try:
            return int((self.home / rel).read_text().strip())
        except (OSError, ValueError):
            return None

    def stop_all(self) -> None:
        for script in ("worker.sh", "server.sh", "postgres.sh"):
            try:
                self.sh(script, "stop", check=False, timeout=120)
            except Exception as e:  # noqa: BLE001 - go on stopping the others
                print(f"[scale] {script} stop: {e}", file=sys.stderr)


def _cpu(p, children: bool = True) -> float:
    t = p.cpu_times()
    return t.user + t.system + ((t.children_user + t.children_system) if children else 0.0)


def _mem(p) -> tuple[int, int]:
    """(VmHWM = peak RSS, RssAnon = private memory now) of a process, bytes."""
    f = {}
    try:
        for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
            if line.startswith(("VmHWM:", "RssAnon:")):
                k, v = line.split(":", 1)
                f[k] = int(v.split()[0]) * 1024
    except OSError:
        pass
    return f.get("VmHWM", p.memory_info().rss), f.get("RssAnon", 0)


class Poller(PeriodicSampler):
    """Samples the stack's processes by kind: CPU-s timeline per kind, peak RSS per kind."""

    KINDS = ("flow-run", "worker", "server", "postgres")

    def __init__(self, roots: dict[str, int], period: float = 0.5):
        import psutil
        super().__init__(period)
        self._psutil = psutil
        self.roots = roots                       # kind → root pid (server, worker, postgres)
        self.peak: dict[str, int] = dict.fromkeys(self.KINDS, 0)
        self.peak_anon: dict[str, int] = dict.fromkeys(self.KINDS, 0)   # largest private (RssAnon) seen
        self.peak_pid: dict[int, tuple[str, int]] = {}
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.n_procs: dict[str, int] = dict.fromkeys(self.KINDS, 0)

    def _procs(self) -> dict[str, list]:
        ps = self._psutil
        out: dict[str, list] = {k: [] for k in self.KINDS}
        for kind, pid in self.roots.items():
            try:
                root = ps.Process(pid)
                kids = root.children(recursive=True)
            except ps.Error:
                continue
            if kind == "worker":
                out["worker"].append(root)
                out["flow-run"] += kids
            else:
                out[kind] += [root, *kids]
        return out

    def _sample(self) -> None:
        ps = self._psutil
        cpu = dict.fromkeys(self.KINDS, 0.0)
        procs = self._procs()
        for kind, plist in procs.items():
            self.n_procs[kind] = max(self.n_procs[kind], len(plist))
            for p in plist:
                try:
                    # the worker's reaped children are flow runs: counted under flow-run (below)
                    cpu[kind] += _cpu(p, children=kind != "worker")
                    h, anon = _mem(p)
                    self.peak[kind] = max(self.peak[kind], h)
                    self.peak_anon[kind] = max(self.peak_anon[kind], anon)
                    self.peak_pid[p.pid] = (kind, max(h, self.peak_pid.get(p.pid, (kind, 0))[1]))
                except ps.Error:
                    pass
        # CPU of flow runs that have ended: reaped into the worker's children fields
        try:
            w = ps.Process(self.roots["worker"]).cpu_times()
            cpu["flow-run"] += w.children_user + w.children_system
        except (ps.Error, KeyError):
            pass
        self.samples.append((time.time(), cpu))

    def cpu_between(self, t0: float, t1: float) -> dict[str, float]:
        import numpy as np
        t = np.array([s[0] for s in self.samples])
        out = {}
        for k in self.KINDS:
            v = np.maximum.accumulate(np.array([s[1][k] for s in self.samples]))   # a process gone between
            out[k] = float(np.interp(t1, t, v) - np.interp(t0, t, v))             # samples: hold the last value
        return out


