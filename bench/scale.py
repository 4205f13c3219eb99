"""Section ``scale`` (opt-in: ``python -m bench.run --sections scale``): the ``curate`` deployment
end to end on N generated exams, on a PostgreSQL-backed Prefect server of the bench's own.

For each N: a fresh stack under a temp folder (its own MRIFOUNDRY_HOME, free loopback ports):
``deploy/postgres.sh`` + ``MRIFOUNDRY_PREFECT_DB=postgres deploy/server.sh start``,
``deploy/worker.sh deploy`` + ``start`` (a process worker), then
``prefect deployment run curate/curate-duke110k -p archive=… -p out=… -p reports=null --watch``
on N exams of 2 series of 64×64×12 (``bench.scaling.make_archive``), and every process stopped by
PID at the end (``worker.sh stop``, ``server.sh stop``, ``postgres.sh stop``), also on error.

What is measured, and how:

* **processes** are sampled every 0.5 s from /proc (psutil) by kind: ``server`` (the PID in
  run/server.pid and its descendants), ``worker`` (run/worker.pid itself), ``flow-run`` (every
  descendant of the worker: the flow-run process the process worker starts, and its children),
  ``postgres`` (the postmaster and its backends). Peak RSS of a kind = the largest VmHWM of any of
  its processes (``memory_full_info``/``/proc/PID/status``), i.e. the biggest single process.
* **CPU of the flow run** (per-exam CPU) = the worker's ``children_user + children_system`` after the
  flow-run process has ended and been reaped: the exact CPU of the flow-run process and every child it
  waited for. The other kinds: CPU-s of their processes (own + reaped children) between the flow run's
  start and end, interpolated from the samples.
* **wall** = the flow run's ``end_time − start_time`` in Prefect's database (the run itself, not the
  worker's pick-up delay); per exam = wall / N.
* **orchestration share** = 1 − S / C over the exam phase (the ``curate-exams`` subflow's start → end),
  S = Σ ``stage_results.duration_s`` of this run's exam-level ledger rows (the five stage functions'
  time), C = CPU-s of every process of the stack in the same window (flow run + worker + server +
  postgres, interpolated from the samples). ``duration_s`` is wall time: a stage thread waiting for
  a core or the GIL counts as stage time, so with as many stage threads as cores the share is a
  lower bound; the CPU of the Prefect processes alone (worker + server + postgres) / C is shown too.
* **phases** from the flow's own log lines (Prefect's ``log`` table; run_curation's ``say``):
  start → "selection:" (lock, folder index, selection), the subflow (exams), subflow end →
  "catalog:" (finalize_catalog: catalog merge of the Parquet parts, ledger export, views; and
  run_summary: montage), "catalog:" → "review page:", "review page:" → flow end (PHI audit, artifacts).
  The ledger export (``ledger.to_arrow`` + ``write_table``) and the PHI audit (``audit_output``) are
  also timed again by this process on the finished output (same inputs, warm page cache).
* **Prefect database size** = ``pg_database_size('prefect')`` after the run; task runs and log rows
  counted from the tables.

Run alone: ``python -m bench.scale --n 10,20 [--workers 2] [--json FILE] [--keep]``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO
from bench.scale_stack import PREFECT, Poller, Stack
from bench.run_cost import plain_reference
from bench.scale_record import RECORDED, record
from bench.scaling import make_archive

SERIES_PER_EXAM, SIZE, SLICES = 2, 64, 12
DUKE_EXAMS, DUKE_SERIES = 27_000, 116_806
#: docs/benchmarks.md, "curation CPU per 512²×60 series" (the stage functions on one real-size series)
PIXEL_CPU_S_PER_SERIES = 0.98   # make bench 2026-12-07 (1.35 before the part-5 cuts)
WALL_RATIO_TARGET, SHARE_TARGET, RSS_RATIO_TARGET = 1.2, 0.05, 1.2


def _epoch(s: str) -> float:
    return float(s) if s else float("nan")


def measure(n: int, archive: Path, home: Path, workers: int, per_task: int = 0) -> dict:
    """One N: a fresh PostgreSQL + Prefect server + worker, the curate deployment on ``archive``."""
    import psutil
    home.mkdir(parents=True, exist_ok=True)
    home.chmod(0o755)          # Debian's postgres user must reach home/postgres/data
    st = Stack(home)
    out = home / "out"
    res: dict = {"n_exams": n, "workers": workers, "exams_per_task": per_task}
    t = time.perf_counter()
    try:
        st.sh("server.sh", "start")
        res["stack_start_s"] = time.perf_counter() - t
        t = time.perf_counter()
        st.sh("worker.sh", "deploy", timeout=600)
        st.sh("worker.sh", "start", timeout=120)
        res["deploy_worker_s"] = time.perf_counter() - t
        roots = {"server": st.pid("run/server.pid"), "worker": st.pid("run/worker.pid"),
                 "postgres": st.pid("postgres/postgres.pid")}
        if None in roots.values():
            raise RuntimeError(f"missing PID files: {roots}")
        worker = psutil.Process(roots["worker"])
        with Poller(roots) as poll:
            t = time.perf_counter()
            r = subprocess.run(
                [PREFECT, "deployment", "run", "curate/curate-duke110k", "-p", f"archive={archive}",
                 "-p", f"out={out}", "-p", "reports=null", "-p", f"workers={workers}", "-p", "runner=threads",
                 "-p", f"exams_per_task={per_task}",
                 "--watch", "--watch-timeout", "7200"],
                cwd=REPO, env=st.env, capture_output=True, text=True, timeout=7500)
            res["submit_to_done_s"] = time.perf_counter() - t
            if r.returncode:
                raise RuntimeError(f"curate deployment run failed ({r.returncode}):\n{r.stdout[-3000:]}\n"
                                   f"{r.stderr[-3000:]}\n{_tail(home / 'logs' / 'worker.log')}")
            # the flow-run process ends after reporting its final state: wait for the worker to reap it
            deadline = time.time() + 120
            while worker.children() and time.time() < deadline:
                time.sleep(0.2)
        run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", r.stdout).group(1)
        wt = worker.cpu_times()
        res["flow_cpu_s"] = wt.children_user + wt.children_system
        res["peak_rss_mb"] = {k: v / 2 ** 20 for k, v in poll.peak.items()}
        res["peak_anon_mb"] = {k: v / 2 ** 20 for k, v in poll.peak_anon.items()}
        res["n_procs"] = poll.n_procs
        res.update(_from_postgres(st, run_id))
        res["wall_s"] = res["flow_end"] - res["flow_start"]
        res["cpu_run_s"] = poll.cpu_between(res["flow_start"], res["flow_end"])
        res["cpu_exams_s"] = poll.cpu_between(res["sub_start"], res["sub_end"])
        res.update(_from_ledger(out, run_id))
        res.update(_retime(out, run_id))
        res["out_mb"] = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2 ** 20
        return res
    finally:
        st.stop_all()


def _tail(p: Path, n: int = 3000) -> str:
    try:
        return p.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _from_postgres(st: Stack, run_id: str) -> dict:
    (state, start, end), = st.psql(f"SELECT state_type, extract(epoch from start_time), extract(epoch from end_time) "
                                   f"FROM flow_run WHERE id = '{run_id}'")
    if state != "COMPLETED":
        raise RuntimeError(f"flow run {run_id} ended {state}")
    (sub_start, sub_end), = st.psql(
        "SELECT extract(epoch from fr.start_time), extract(epoch from fr.end_time) FROM flow_run fr "
        "JOIN flow f ON fr.flow_id = f.id WHERE f.name = 'curate-exams'")
    logs = st.psql(f"SELECT extract(epoch from timestamp), message FROM log WHERE flow_run_id = '{run_id}' "
                   "AND (message LIKE 'selection:%' OR message LIKE 'catalog:%' OR message LIKE 'review page:%') "
                   "ORDER BY timestamp")
    marks = {}
    for ts, msg in logs:
        marks.setdefault(msg.split(":", 1)[0], float(ts))
    (size,), = st.psql("SELECT pg_database_size('prefect')")
    (task_runs,), = st.psql("SELECT count(*) FROM task_run")
    (log_rows,), = st.psql("SELECT count(*) FROM log")
    (states,), = st.psql("SELECT count(*) FROM task_run_state")
    flow_start, flow_end, sub_start, sub_end = map(_epoch, (start, end, sub_start, sub_end))
    sel, cat, rev = (marks.get(k, float("nan")) for k in ("selection", "catalog", "review page"))
    return {"run_id": run_id, "flow_start": flow_start, "flow_end": flow_end, "sub_start": sub_start,
            "sub_end": sub_end, "db_mb": int(size) / 2 ** 20, "task_runs": int(task_runs),
            "task_run_states": int(states), "log_rows": int(log_rows),
            "phase_s": {"start + selection": sel - flow_start, "exams (subflow)": sub_end - sub_start,
                        "finalize + summary": cat - sub_end, "review page": rev - cat,
                        "PHI audit + artifacts": flow_end - rev}}


def _from_ledger(out: Path, run_id: str) -> dict:
    import duckdb
    cat = out / "research" / "catalog" / "stage_results"
    con = duckdb.connect()
    try:
        stage_s, rows, exams, first, last = con.execute(
            f"SELECT sum(duration_s) FILTER (WHERE item_kind = 'exam'), count(*), "
            "count(DISTINCT exam_id) FILTER (WHERE item_kind = 'exam' AND stage = 'catalog' AND status = 'done'), "
            "epoch(min(started)), epoch(max(finished)) "
            f"FROM read_parquet('{cat}/*.parquet') WHERE run_id = ?", [run_id]).fetchone()
        series_ok, = con.execute(f"SELECT count(*) FROM read_parquet('{out}/research/catalog/series/*.parquet') "
                                 "WHERE status = 'ok'").fetchone()
    finally:
        con.close()
    return {"stage_s": float(stage_s or 0), "ledger_rows": int(rows), "exams_done": int(exams),
            "series_ok": int(series_ok), "ledger_first": first, "ledger_last": last}


def _retime(out: Path, run_id: str) -> dict:
    """The ledger export and the PHI audit timed again on the finished output (this process)."""
    from mrifoundry.catalog.schema import STAGE_RESULTS
    from mrifoundry.catalog.store import write_table
    from mrifoundry.tasks.curation.audit.phi_audit import audit_output
    from mrifoundry.tasks.curation.workspace import Workspace
    ws = Workspace(out, run_id)
    t = time.perf_counter()
    tbl = ws.ledger.to_arrow()
    write_table(ws.research, STAGE_RESULTS, tbl)
    ledger_s = time.perf_counter() - t
    t = time.perf_counter()
    rep = audit_output(out, None)
    audit_s = time.perf_counter() - t
    return {"ledger_export_s": ledger_s, "audit_s": audit_s, "audit_ok": bool(rep.ok)}


def run_scale(ns: list[int], workers: int = 2, keep: bool = False, per_task: tuple[int, ...] = (0,),
              n_ref: int = 200) -> list[dict]:
    """Every N (and every ``per_task``: exams per Prefect task, 0 = the flow's auto choice); the
    plain runner's exam-phase CPU on the first ``n_ref`` exams is each run's ``plain`` reference."""
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    work.chmod(0o755)
    try:
        big = work / f"archive{max(ns)}"
        t = time.perf_counter()
        make_archive(big, max(ns), SERIES_PER_EXAM, SIZE, SLICES, distinct_series=True)
        print(f"[scale] generated {max(ns)} exams in {time.perf_counter() - t:.0f} s", flush=True)
        results = []
        ref_dir = work / "plain"
        n_ref = min(n_ref, max(ns))
        for e in range(n_ref):
            shutil.copytree(big / f"exam{e:03d}", ref_dir / "archive" / f"exam{e:03d}", copy_function=os.link)
        plain = plain_reference(ref_dir / "archive", ref_dir / "out", workers)
        shutil.rmtree(ref_dir, ignore_errors=True)
        print(f"[scale] plain runner (no Prefect), {n_ref} exams: {plain['cpu_s'] / n_ref:.3f} CPU-s/exam, "
              f"{plain['wall_s'] / n_ref:.3f} s/exam", flush=True)
        for n in sorted(ns):
            archive = big
            if n != max(ns):      # the first n exams, hard-linked
                archive = work / f"archive{n}"
                for e in range(n):
                    shutil.copytree(big / f"exam{e:03d}", archive / f"exam{e:03d}", copy_function=os.link)
            for k in per_task:
                t = time.perf_counter()
                r = measure(n, archive, work / f"n{n}k{k}", workers, k)
                r["plain"] = plain
                c = r["cpu_exams_s"]
                print(f"[scale] N={n} exams_per_task={k}: {time.perf_counter() - t:.0f} s (flow {r['wall_s']:.0f} s, "
                      f"{r['flow_cpu_s'] / n:.3f} flow-run CPU-s/exam, {r['task_runs']} task runs, "
                      f"stack CPU {sum(c.values()) / n:.3f} s/exam, orchestration "
                      f"{1 - plain['cpu_s'] / plain['n'] / (sum(c.values()) / n):.1%}, Prefect processes "
                      f"{(c['worker'] + c['server'] + c['postgres']) / sum(c.values()):.1%})", flush=True)
                results.append(r)
                if not keep:
                    shutil.rmtree(work / f"n{n}k{k}", ignore_errors=True)
        return results
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"[scale] kept {work}")


def projection(r: dict) -> dict:
    """Duke-110K from the largest N's figures (assumptions in the note of the table)."""
    n = r["n_exams"]
    s_per_exam = DUKE_SERIES / DUKE_EXAMS
    stage_cpu_exam = r["plain"]["cpu_s"] / r["plain"]["n"]   # CPU of the five stages, 2 tiny series
    fixed_per_series = stage_cpu_exam / SERIES_PER_EXAM     # mostly fixed cost (the pixels are tiny)
    # flow-run CPU in the exam phase beyond what the plain runner spends on the same exams
    orch_flow_exam = max(r["cpu_exams_s"]["flow-run"] / n - r["plain"]["cpu_s"] / r["plain"]["n"], 0.0)
    prefect_exam = (r["cpu_exams_s"]["server"] + r["cpu_exams_s"]["postgres"] + r["cpu_exams_s"]["worker"]) / n
    tail_exam = (r["wall_s"] - r["phase_s"]["exams (subflow)"]) / n    # selection + finalize + review + audit
    work_exam = s_per_exam * (fixed_per_series + PIXEL_CPU_S_PER_SERIES) + orch_flow_exam
    out = {"series_per_exam": s_per_exam, "work_cpu_exam": work_exam, "orch_flow_exam": orch_flow_exam,
           "prefect_exam": prefect_exam, "tail_exam_s": tail_exam}
    for name, cores in (("64-core node", 64), ("10-node SLURM (640 cores)", 640)):
        usable = cores - 1     # one core for the flow process, server and postgres
        compute_h = DUKE_EXAMS * work_exam / max(usable, 1) / 3600
        # one flow-run process submits and tracks every task (Python, one core): its orchestration
        # CPU per exam bounds the rate; the Prefect server (one uvicorn process) likewise
        flow_bound_h = DUKE_EXAMS * orch_flow_exam / 3600
        server_bound_h = DUKE_EXAMS * prefect_exam / 3600
        tail_h = DUKE_EXAMS * tail_exam / 3600
        out[name] = {"compute_h": compute_h, "flow_bound_h": flow_bound_h, "server_bound_h": server_bound_h,
                     "tail_h": tail_h, "total_h": max(compute_h, flow_bound_h, server_bound_h) + tail_h}
    return out


def section(ns: list[int], workers: int = 2) -> dict:
    runs = run_scale(ns, workers)
    rows, rss_rows, phase_rows, db_rows = [], [], [], []
    for r in runs:
        n = r["n_exams"]
        c = r["cpu_exams_s"]
        total = sum(c.values())
        plain_exam = r["plain"]["cpu_s"] / r["plain"]["n"]
        share = 1 - plain_exam / (total / n) if total else float("nan")
        prefect_share = (c["worker"] + c["server"] + c["postgres"]) / total if total else float("nan")
        r["orch_share"], r["prefect_share"] = share, prefect_share
        rows.append([n, r["series_ok"], f"{r['wall_s']:.0f}", f"{r['wall_s'] / n:.3f}",
                     f"{r['phase_s']['exams (subflow)'] / n:.3f}", f"{r['flow_cpu_s'] / n:.3f}",
                     f"{r['stage_s'] / n:.3f}", f"{plain_exam:.3f}", f"{total / n:.3f}", f"{share:.1%}",
                     f"{prefect_share:.1%}", r["task_runs"]])
        rss_rows.append([n, *(f"{r['peak_rss_mb'][k]:.0f} ({r['peak_anon_mb'][k]:.0f})" for k in Poller.KINDS),
                         " / ".join(str(r["n_procs"][k]) for k in Poller.KINDS)])
        p = r["phase_s"]
        phase_rows.append([n, *(f"{p[k]:.1f}" for k in p), f"{r['ledger_export_s']:.2f}", f"{r['audit_s']:.1f}"])
        db_rows.append([n, f"{r['db_mb']:.0f}", r["task_runs"], r["task_run_states"], r["log_rows"],
                        r["ledger_rows"], f"{r['stack_start_s']:.0f}", f"{r['deploy_worker_s']:.0f}"])
    lo, hi = runs[0], runs[-1]
    wall_ratio = (hi["wall_s"] / hi["n_exams"]) / (lo["wall_s"] / lo["n_exams"])
    cpu_ratio = (hi["flow_cpu_s"] / hi["n_exams"]) / (lo["flow_cpu_s"] / lo["n_exams"])
    span = f"N = {lo['n_exams']} → {hi['n_exams']}"
    targets = [
        {"name": f"scale: per-exam wall, {span}", "target": f"≤ {WALL_RATIO_TARGET:.1f}×",
         "measured": f"{wall_ratio:.2f}×", "met": wall_ratio <= WALL_RATIO_TARGET},
        {"name": f"scale: orchestration share of CPU (exam phase), N = {hi['n_exams']}",
         "target": f"≤ {SHARE_TARGET:.0%}", "measured": f"{hi['orch_share']:.1%}", "met": hi["orch_share"] <= SHARE_TARGET},
    ]
    for k in Poller.KINDS:
        ratio = hi["peak_rss_mb"][k] / lo["peak_rss_mb"][k] if lo["peak_rss_mb"][k] else float("nan")
        targets.append({"name": f"scale: peak RSS of the {k} process, {span}", "target": f"≤ {RSS_RATIO_TARGET:.1f}×",
                        "measured": f"{ratio:.2f}× ({lo['peak_rss_mb'][k]:.0f} → {hi['peak_rss_mb'][k]:.0f} MB)",
                        "met": ratio <= RSS_RATIO_TARGET})
    pj = projection(hi)
    proj_rows = [[name, f"{v['compute_h']:.2f}", f"{v['flow_bound_h']:.2f}", f"{v['server_bound_h']:.2f}",
                  f"{v['tail_h']:.2f}", f"{v['total_h']:.2f}"]
                 for name, v in pj.items() if isinstance(v, dict)]
    series = f"{SERIES_PER_EXAM} series of {SIZE}²×{SLICES}"
    tables = [
        {"title": f"Curate deployment on PostgreSQL, N exams of {series}, runner=threads, {workers} workers "
                  f"(machine has {os.cpu_count()} cores)",
         "headers": ["N exams", "series ok", "flow wall s", "wall s/exam", "exam-phase wall s/exam",
                     "flow-run CPU-s/exam", "stage s/exam (ledger)", "plain runner CPU-s/exam",
                     "stack CPU-s/exam (exam phase)", "orchestration share", "Prefect processes' share", "task runs"],
         "rows": rows,
         "note": f"Per-exam wall: {wall_ratio:.2f}× and flow-run CPU per exam {cpu_ratio:.2f}× from the smallest "
                 "to the largest N. Flow-run CPU = the process worker's reaped-children CPU after the run (the "
                 "flow-run process and its children, the whole run). Orchestration share = 1 − the plain "
                 "runner's exam-phase CPU-s per exam (tasks/curation/runner.py on the same machine, same run, no "
                 "Prefect: `plain_reference`, the first exams of the same archive) / the CPU-s per exam of all "
                 "the stack's processes in the deployment's exam phase (the curate-exams subflow). Task runs: "
                 "groups of exams_per_task exams (auto) plus the subflow's own. Prefect processes' share = (worker + server + postgres CPU-s) / the "
                 "same total."},
        {"title": "Peak RSS per process kind, MB: largest VmHWM of any process of the kind (largest private "
                  "RssAnon sampled)",
         "headers": ["N exams", *Poller.KINDS, "processes seen (flow-run / worker / server / postgres)"],
         "rows": rss_rows,
         "note": "VmHWM counts the shared pages a process touched: a PostgreSQL backend's grows as it reads more "
                 "of the shared buffer cache (shared_buffers, 128 MB by default), which is bounded by the "
                 "configuration, not per-exam state; RssAnon in brackets is the private part."},
        {"title": "Phases of the flow run, s (from the flow's log lines in Prefect's database), and two "
                  "functions timed again on the finished output",
         "headers": ["N exams", *hi["phase_s"], "ledger export (retimed)", "PHI audit (retimed, 1 process)"],
         "rows": phase_rows,
         "note": "finalize + summary = catalog merge (4 tables), ledger export, DuckDB views, QC montage and "
                 "summary queries (the subflow's end → the 'catalog:' log line). PHI audit + artifacts = the "
                 "'review page:' line → the flow run's end."},
        {"title": "Prefect database (PostgreSQL) after the run, and stack start-up",
         "headers": ["N exams", "pg_database_size MB", "task runs", "task-run states", "log rows", "ledger rows",
                     "postgres + server start s", "deploy + worker start s"],
         "rows": db_rows},
        {"title": f"Projection to Duke-110K ({DUKE_EXAMS:,} exams, {DUKE_SERIES:,} series ≈ "
                  f"{pj['series_per_exam']:.2f} series/exam), hours",
         "headers": ["where", "compute (stage + per-exam work / cores)", "flow-process bound",
                     "Prefect server + postgres bound", "serial tail (selection, finalize, review, audit)", "total"],
         "rows": proj_rows,
         "note": f"From N = {hi['n_exams']}. Work per exam = {pj['series_per_exam']:.2f} × (fixed cost per series, "
                 f"the plain runner's CPU-s/exam ÷ {SERIES_PER_EXAM} of these tiny series, "
                 f"+ {PIXEL_CPU_S_PER_SERIES} CPU-s of pixel work per 512²×60 series from the curation section) "
                 f"+ the flow-run's CPU outside the stages per exam ({pj['orch_flow_exam']:.3f} CPU-s) = "
                 f"{pj['work_cpu_exam']:.2f} CPU-s, spread over all cores but one (a Dask or SLURM runner: the "
                 "threads runner is bound by one process's GIL). The flow-run process submits and tracks every "
                 "task in one Python process, so its orchestration CPU per exam bounds the rate whatever the "
                 f"core count; likewise the Prefect server + postgres ({pj['prefect_exam']:.3f} CPU-s/exam, "
                 "one uvicorn process). The serial tail (selection, finalize, review page, audit) is assumed "
                 f"linear in N at this run's {pj['tail_exam_s']:.3f} s/exam. Total = max(compute, bounds) + "
                 "tail. Not modelled: shared file-system I/O, SLURM queue waits, job start-up, Dask's own "
                 "scheduler overhead, larger series' memory."},
    ]
    return {"tables": tables, "targets": targets, "raw": {"runs": runs, "projection": pj}}


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", default="10,20", help="comma list of exam counts")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--record", action="store_true",
                    help=f"also store the section in {RECORDED.relative_to(REPO)} (make bench includes it)")
    ap.add_argument("--per-task", default="0", help="comma list of exams per Prefect task (0: the flow's auto)")
    ap.add_argument("--keep", action="store_true", help="keep the work folders (prints where), print the raw figures")
    a = ap.parse_args()
    ns = [int(x) for x in a.n.split(",")]
    if a.keep:
        res = run_scale(ns, a.workers, keep=True, per_task=tuple(int(k) for k in a.per_task.split(",")))
        print(json.dumps(res, indent=1, default=str))
    else:
        sec = section(ns, a.workers)
        if a.json:
            a.json.write_text(json.dumps(sec, indent=1, default=str))
        if a.record:
            record(sec, "python -m bench.scale " + " ".join(sys.argv[1:]))
        from bench.report import _table
        for t in sec["tables"]:
            print(f"\n**{t['title']}**\n\n{_table(t['headers'], t['rows'])}\n\n{t.get('note', '')}")
        for t in sec["targets"]:
            print(f"  {'MET    ' if t['met'] else 'NOT MET'} {t['name']}: {t['measured']} (target {t['target']})")
