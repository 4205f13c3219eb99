"""Section 3: flow throughput with the Dask runner (1 vs 2 worker processes) and the peak
memory of one worker curating a large series.

The flow runs in a child process (``python -m bench.scaling --flows …``) with its own
``PREFECT_HOME`` and no ``PREFECT_API_URL``, so Prefect starts a temporary local server for
it once; worker counts are interleaved (1, 2, 1, 2 …). Throughput uses the processing span
from the stage ledger (first exam stage start → last exam stage end), which excludes server
and Dask cluster start-up; the end-to-end wall time is reported too.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, PeriodicSampler, median
from bench.series import make_series

RSS_TARGET_MB = 1536


def make_archive(root: Path, n_exams: int, series_per_exam: int, size: int, n_slices: int,
                 distinct_series: bool = False) -> int:
    """A folder archive of generated exams (one patient each); returns the number of series.
    ``distinct_series``: the series of one exam get different pixels (by default they are the same,
    and curation keeps the first and rejects the others as ``duplicate_series``)."""
    from pydicom.uid import generate_uid
    for e in range(n_exams):
        study = generate_uid()
        for s in range(series_per_exam):
            pixels = {}
            if distinct_series:
                import numpy as np

                from tests.dicom_factory import default_pixels
                pixels["volume"] = np.stack([default_pixels(size, size, k, t=s) for k in range(n_slices)])
            make_series(root / f"exam{e:03d}" / f"s{s}", size, n_slices, **pixels,
                        extra={"StudyInstanceUID": study, "PatientID": f"BENCHP{e:04d}",
                               "PatientName": f"Bench^P{e}", "AccessionNumber": f"BACC{e:05d}",
                               "StudyDate": "20190315", "StudyDescription": "MRI KNEE WITHOUT CONTRAST",
                               "BodyPartExamined": "KNEE", "SeriesNumber": s + 1})
    return n_exams * series_per_exam


def _child_env(home: Path) -> dict[str, str]:
    # drop the project's server settings (deploy/env.sh) so Prefect starts its own temporary server
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MRIFOUNDRY_"))}
    env.update(PREFECT_HOME=str(home / "prefect"), MRIFOUNDRY_HOME=str(home / "mrifoundry"),
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="90", PREFECT_SERVER_ANALYTICS_ENABLED="false",
               DO_NOT_TRACK="1", PREFECT_LOGGING_LEVEL="WARNING", PYTHONPATH=str(REPO))
    return env


def _cpu_s(p) -> float:
    t = p.cpu_times()
    return t.user + t.system


class _ChildRss(PeriodicSampler):
    """Polls this process's descendants: peak RSS of the Dask workers, and CPU-seconds of the
    workers vs everything else (this orchestrating process and the Prefect server) — on a
    machine with as many cores as workers, the rest competes with the workers for cores."""

    def __init__(self, period: float = 0.2):
        import psutil
        super().__init__(period)
        self._me, self.peak = psutil.Process(), {}
        self._worker_cpu: dict[int, float] = {}      # last seen, from 0 (workers start in the run)
        self._other_cpu: dict[int, list[float]] = {}  # pid → [first seen, last seen]
        self.samples: list[tuple[float, float, float]] = []   # (epoch s, worker CPU-s, other CPU-s)

    def _sample(self) -> None:
        for p in [self._me, *self._me.children(recursive=True)]:
            try:
                cmd = " ".join(p.cmdline())
                cpu = _cpu_s(p)
                # Dask's nannies spawn workers with multiprocessing; the Prefect server is uvicorn
                if "multiprocessing" in cmd and "resource_tracker" not in cmd:
                    self.peak[p.pid] = max(self.peak.get(p.pid, 0), p.memory_info().rss)
                    self._worker_cpu[p.pid] = cpu
                else:
                    self._other_cpu.setdefault(p.pid, [cpu, cpu])[1] = cpu
            except Exception:  # noqa: BLE001 - processes come and go
                pass
        self.samples.append((time.time(), self.worker_cpu_s, self.other_cpu_s))

    def in_window(self, t0: float, t1: float) -> tuple[float, float]:
        """(worker, other) CPU-s between epoch seconds t0 and t1 (linear between samples)."""
        import numpy as np
        t, w, o = (np.array(c) for c in zip(*self.samples))
        return (float(np.interp(t1, t, w) - np.interp(t0, t, w)), float(np.interp(t1, t, o) - np.interp(t0, t, o)))


    @property
    def worker_cpu_s(self) -> float:
        return sum(self._worker_cpu.values())

    @property
    def other_cpu_s(self) -> float:
        return sum(last - first for first, last in self._other_cpu.values())



def _flows_main(archive: Path, work: Path, reps: int, workers: list[int], result: Path) -> None:
    """Child process: run the curate flow ``reps`` × for each worker count; write JSON results."""
    import duckdb
    from prefect import flow

    from mrifoundry.flows.curate import curate

    @flow(name="bench-warmup")
    def warmup() -> None:
        return None

    warmup()   # starts the temporary Prefect server, outside the timings
    runs = []
    for rep in range(reps):
        for w in workers:
            out = work / f"out-{rep}-w{w}"
            with _ChildRss() as rss:
                t0 = time.perf_counter()
                state = curate(archive=str(archive), reports=None, out=str(out), runner="dask", workers=w,
                               return_state=True)
                wall_s = time.perf_counter() - t0
            if not state.is_completed():
                raise RuntimeError(f"curate failed ({w} workers): {state.message}")
            cat = out / "research" / "catalog"
            con = duckdb.connect()
            t_start, t_end = con.execute(
                f"SELECT epoch(min(started)), epoch(max(finished)) FROM read_parquet('{cat}/stage_results/*.parquet') "
                "WHERE item_kind = 'exam'").fetchone()
            span = t_end - t_start
            worker_cpu, other_cpu = rss.in_window(t_start, t_end)
            n_ok, = con.execute(f"SELECT count(*) FROM read_parquet('{cat}/series/*.parquet') "
                                "WHERE status = 'ok'").fetchone()
            con.close()
            runs.append({"workers": w, "wall_s": wall_s, "span_s": float(span), "series_ok": int(n_ok),
                         "worker_peak_rss_mb": max(rss.peak.values(), default=0) / 2 ** 20,
                         "worker_cpu_s": worker_cpu, "other_cpu_s": other_cpu})
            shutil.rmtree(out, ignore_errors=True)
    result.write_text(json.dumps(runs))


def flow_throughput(n_exams: int, series_per_exam: int, size: int, n_slices: int, reps: int) -> list[dict]:
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    log = work / "flows.log"
    try:
        make_archive(work / "archive", n_exams, series_per_exam, size, n_slices)
        cmd = [sys.executable, "-m", "bench.scaling", "--flows", str(work / "archive"), "--work", str(work),
               "--reps", str(reps), "--result", str(work / "result.json")]
        with open(log, "wb") as fh:
            rc = subprocess.run(cmd, cwd=REPO, env=_child_env(work), stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            raise RuntimeError(f"flow bench failed (rc {rc}):\n" + log.read_text(errors="replace")[-4000:])
        return json.loads((work / "result.json").read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def series_peak_rss(size: int, n_slices: int) -> dict:
    """Peak RSS of a fresh process curating one size²×n_slices series (all four stages)."""
    work = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    try:
        make_series(work / "series", size, n_slices, extra={"PatientID": "BENCHRSS", "AccessionNumber": "BRSS1"})
        r = subprocess.run([sys.executable, "-m", "bench.curation", "--rss", str(work / "series")], cwd=REPO,
                           capture_output=True, text=True, check=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        return json.loads(r.stdout.strip().splitlines()[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(archive: tuple[int, int, int, int], reps: int, rss_sizes: list[tuple[int, int]], rss_runs: int,
        flows: bool = True) -> dict:
    tables, targets, raw = [], [], {}
    if flows:
        n_exams, per_exam, size, n = archive
        runs = flow_throughput(n_exams, per_exam, size, n, reps)
        raw["flows"] = runs
        rows, thr = [], {}
        for w in sorted({r["workers"] for r in runs}):
            rs = [r for r in runs if r["workers"] == w]
            thr[w] = [r["series_ok"] / r["span_s"] for r in rs]
            rows.append([w, rs[0]["series_ok"], f"{median([r['span_s'] for r in rs]):.1f}",
                         f"{median(thr[w]):.3f}", f"{median([r['wall_s'] for r in rs]):.1f}",
                         f"{median([r['series_ok'] / r['wall_s'] for r in rs]):.3f}",
                         f"{median([r['worker_peak_rss_mb'] for r in rs]):.0f}",
                         f"{median([r['worker_cpu_s'] for r in rs]):.1f}",
                         f"{median([r['other_cpu_s'] for r in rs]):.1f}", len(rs)])
        # per-round ratio: rounds interleave 1 and 2 workers, so each pair shared the same load
        speedup = median([b / a for a, b in zip(thr[1], thr[2])])
        two = [r for r in runs if r["workers"] == 2]
        other_2 = median([r["other_cpu_s"] for r in two])
        cores_span = median([r["span_s"] for r in two]) * (os.cpu_count() or 1)
        other_share = other_2 / cores_span
        tables.append({
            "title": f"Curate flow, runner=dask: {n_exams} exams × {per_exam} series of {size}²×{n} "
                     f"(machine has {os.cpu_count()} cores)",
            "headers": ["workers", "series ok", "processing span s", "series/s (span)", "end-to-end wall s",
                        "series/s (wall)", "peak worker RSS MB", "worker CPU-s (span)", "flow + server CPU-s (span)",
                        "runs"],
            "rows": rows,
            "note": f"Speed-up 2 vs 1 worker (median of per-round ratios, span-based): {speedup:.2f}×. "
                    "End-to-end wall includes Dask cluster start-up, selection, finalize and QC. CPU-s within the "
                    "processing span (processes sampled every 0.2 s): the Dask worker processes vs this flow's own "
                    f"process and the Prefect server. With 2 workers on {os.cpu_count()} cores, flow + server take "
                    f"{other_share:.0%} of the span's {cores_span:.1f} core-s ({other_2:.1f} CPU-s): cores the "
                    "workers do not get.",
        })
        targets.append({"name": "flow speed-up, 2 vs 1 Dask workers", "target": "≥ 1.80×",
                        "measured": f"{speedup:.2f}×", "met": speedup >= 1.8})
    rss_rows = []
    for size, n in rss_sizes:
        rs = [series_peak_rss(size, n) for _ in range(rss_runs)]
        raw[f"rss {size}²×{n}"] = rs
        peak = median([r["peak_mb"] for r in rs])
        rss_rows.append([f"{size}²×{n}", f"{median([r['baseline_mb'] for r in rs]):.0f}", f"{peak:.0f}", len(rs)])
        targets.append({"name": f"peak RSS of a worker curating one {size}²×{n} series", "target": "≤ 1536 MB",
                        "measured": f"{peak:.0f} MB", "met": peak <= RSS_TARGET_MB})
    tables.append({"title": "Peak RSS of one process curating one series (de-id, continuity, PNG, NIfTI 1 mm)",
                   "headers": ["series", "after imports MB", "peak MB", "runs"], "rows": rss_rows,
                   "note": "VmHWM of a fresh Python process (after imports = the floor before any data). A Dask "
                           "worker adds its own runtime: see the flow table's peak worker RSS, when the flow runs."})
    return {"tables": tables, "targets": targets, "raw": raw}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--flows", type=Path, required=True, help="archive folder")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--result", type=Path, required=True)
    a = ap.parse_args()
    _flows_main(a.flows, a.work, a.reps, [int(w) for w in a.workers.split(",")], a.result)
