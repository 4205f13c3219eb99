"""``make bench``: run every benchmark and write docs/benchmarks.md.

    python -m bench.run [--quick | --tiny] [--out docs/benchmarks.md] [--sections conversion,curation,runcost,flows,rss,catalog,volumes,audit,ingest,gpu]
    python -m bench.run --sections scale [--quick | --tiny]   # opt-in: N = 500, 2000, 5000 exams (hours on 2 cores)

Full mode takes ≈ 10–15 min on 2 cores; ``--quick`` (≈ 2 min) runs the same code on small
sizes, ``--tiny`` (≈ 30 s, no Prefect flow by default) is for the pytest smoke test.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

from bench import (audit_share, catalog_scale, conversion, curation, gpu_pretrain, gpu_pretrain3d, ingest_cost,
                   run_cost, scale, scale_record, scaling, volume_loading)
from bench.common import REPO, machine, versions
from bench.report import all_finite, render

SECTIONS = ("conversion", "curation", "runcost", "flows", "rss", "catalog", "volumes", "audit", "ingest", "gpu")
#: run only when named in --sections (minutes to hours): the curate deployment on N exams (bench/scale.py)
OPT_IN = ("scale",)
MODES = {
    # series sizes are (rows = cols, slices); archive = (exams, series per exam, size, slices)
    "full": dict(conv=[(256, 60), (512, 60), (512, 128)], conv_runs=5,
                 cur=[(256, 60), (512, 60), (256, 200), (512, 200)], cur_runs=3,
                 archive=(8, 3, 256, 60), flow_reps=3, rss=[(512, 200)], rss_runs=3, scale=1.0, query_runs=5,
                 vol=dict(roi=96, n_volumes=4, runs=3), ingest=dict(n_files=12, runs=3),
                 scale_n=(500, 2000, 5000), runcost=dict(kinds=[(40, 2, 64, 12), (5, 1, 512, 60)], rounds=2)),
    "quick": dict(conv=[(128, 30)], conv_runs=3, cur=[(128, 30)], cur_runs=3,
                  archive=(2, 2, 64, 12), flow_reps=1, rss=[(256, 60)], rss_runs=1, scale=0.01, query_runs=3,
                  vol=dict(roi=48, n_volumes=2, runs=2, shape=(96, 96, 96)), ingest=dict(n_files=2, runs=1, small=True),
                  scale_n=(50, 200), runcost=dict(kinds=[(8, 2, 64, 12), (2, 1, 256, 60)], rounds=1)),
    "tiny": dict(conv=[(32, 8)], conv_runs=3, cur=[(32, 8)], cur_runs=3,
                 archive=(1, 1, 32, 8), flow_reps=1, rss=[(32, 8)], rss_runs=1, scale=0.001, query_runs=3,
                 vol=dict(roi=16, n_volumes=2, runs=2, shape=(32, 32, 32)), ingest=dict(n_files=2, runs=1, small=True),
                 scale_n=(10, 20), runcost=dict(kinds=[(3, 1, 32, 8)], rounds=1)),
}
INTROS = {
    "Per-series conversion": (
        "Generated sagittal uint16 series (≈ 200 mm field of view, 3 mm slices). *ours* = "
        "`tasks.curation.convert.nifti.volumes_to_nifti` (dicom2nifti's array and affine → RAS → clean header) on the "
        "checked volume; *native* keeps the acquired spacing (like-for-like with the references), *RAS 1 mm* "
        "is what the pipeline writes. dicom2nifti = `dicom_series_to_nifti(dir, out, reorient_nifti=True)` "
        "(it copies the folder to a temp dir first, part of its cost); dcm2niix = the PyPI binary, "
        "`-b n`, `-z n` / `-z y`, run as a subprocess. Wall-clock seconds."),
    "Curation cost per series": (
        "The plain stage functions in sequence on one generated series: `deidentify_exam` (with a "
        "`PseudonymStore` in a temp dir) → `check_series` → `volume_to_png` → `volumes_to_nifti` (RAS, 1 mm). "
        "CPU-seconds from `time.process_time` (this process, all threads)."),
    "Whole-run cost per series": (
        "`bench/run_cost.py`: generated archives through the plain runner (`tasks/curation/runner.py`, one worker, "
        "audit and review page off), the exam phase timed in CPU-s per series, against `dcm2niix -z y -b n` on "
        "every series of the same archive in the same run (the reaped child's CPU). Targets (issue 24, part 5): "
        "≤ 0.1 CPU-s per tiny 64²×12 series (the fixed cost), ≤ 8× dcm2niix for a 512²×60 series."),
    "Scaling and memory": (
        "`flows.curate.curate(runner=\"dask\", workers=N)` on the same generated archive, in a child process "
        "with its own `PREFECT_HOME` and a temporary Prefect server; 1 and 2 workers alternate. The per-series "
        "peak RSS comes from a fresh process curating one series (`python -m bench.curation --rss`)."),
    "Catalog at Duke-110K size": (
        "Exams, series, slices and stage_results generated column-wise with the catalog schemas and the "
        "project's Parquet writer, views from `catalog.views.build_research_db`, queries through DuckDB."),
    "Volume-recipe data loading": (
        "`bench/volume_loading.py`: one `tasks.data.volumes.VolumeDataset` draw (robust min-max, crop, "
        "flips) of nilearn's MNI152 1 mm T1 template stored as `.nii.gz`, uncached (decompress + percentiles "
        "every draw) against the decoded-volume cache (`tasks/data/volume_cache.py`: float16 `.npy`, memory-mapped) "
        "in the same rounds, one process."),
    "PHI audit on real vendor data": (
        "`bench/audit_share.py`: the real vendor cases with volumes (docs/vendors.md: Siemens fMRI and multiband "
        "DWI mosaics, and the generated-pixel variants of nibabel's DWI mosaic and Philips enhanced MPRAGE) as one "
        "archive, curated by the plain runner (tasks/curation/runner.py, audit off), then `tasks.curation.audit.phi_audit.audit_output` over the output. "
        "Reference in the same run: the whole-file tokenising of research DICOM and PNG that the audit did before."),
    "NIfTI/BIDS ingest": (
        "`bench/ingest_cost.py`: `tasks.ingest.collection.ingest_collection` (one worker) + `finalize_catalog` on a "
        "BIDS tree of real NIfTI (nilearn's MNI152 T1 at 1 mm, nibabel's SPM anatomical at 2 mm), against the bare "
        "nibabel conform it wraps (load → `as_closest_canonical` → `resample_to_output` 1 mm → save .nii.gz) on the "
        "same files in the same rounds. The difference is the checks, the voxel digest, the clean header, the ledger "
        "and the catalog rows."),
    "GPU pretraining": (
        "`bench/gpu_pretrain.py`: a ViT-B/16 forward + backward + AdamW step at 224², and the real DINOv2 "
        "training step of `tasks.pretraining.slices` (2×224 + 8×96 crops, iBOT masks, 65,536-prototype head, teacher "
        "forward, EMA) on synthetic crops, batch 128, bf16 autocast — the GPU-bound ceiling of the MRI-CORE "
        "recipe. Measured live when this machine has CUDA, else taken from the figures recorded on a lent GPU "
        "machine. Target: ≥ 800 images/s on one H100 (MRI-CORE: ≈ 160 images/s per A6000)."),
    "GPU volume pretraining": (
        "`bench/gpu_pretrain3d.py`: each volume recipe's full training step (`tasks.pretraining.volumes.build_method`: "
        "encoder, decoder, SSL heads, losses) + backward + AdamW on synthetic 96³ crops at the recipe's batch, "
        "bf16 autocast, against the bare encoder's step on the same batch (the reference: recipe / encoder is "
        "the share of the backbone's rate the heads and second views leave). Live on CUDA, else the figures "
        "recorded on a lent GPU machine."),
    "Scale: the curate deployment on PostgreSQL": (
        "`bench/scale.py` (opt-in: `python -m bench.run --sections scale`): for each N, N generated exams of 2 "
        "series of 64²×12 (`bench.scaling.make_archive`) curated end to end by the `curate/curate-duke110k` "
        "deployment (`reports=null`, runner=threads, 2 workers) through a process worker, on a Prefect server "
        "backed by PostgreSQL (`deploy/postgres.sh`, `MRIFOUNDRY_PREFECT_DB=postgres deploy/server.sh`), a fresh "
        "stack per N with its own MRIFOUNDRY_HOME and free loopback ports, stopped by PID. Processes sampled "
        "every 0.5 s from /proc by kind (flow-run = the worker's descendants; server; worker; postgres = the "
        "postmaster and its backends). The small exams make the fixed cost per exam, not the pixels, the "
        "work: what grows with N shows. Targets: per-exam wall and peak RSS per process kind at the largest N "
        "≤ 1.2× the smallest N's; orchestration ≤ 5 % of the CPU in the exam phase (1 − the plain runner's "
        "CPU per exam on the same exams, same run / the stack's). An hour on 2 cores: `make bench` includes the "
        "section recorded by the last `python -m bench.scale --n 500,2000,5000 --record`."),
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="small sizes, ≈ 2 min (smoke run)")
    mode.add_argument("--tiny", action="store_true", help="tiny sizes, for the pytest smoke test")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    ap.add_argument("--json", type=Path, help="also write the raw timings here")
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help=f"comma list of {', '.join(SECTIONS)}; opt-in (not in the default): {', '.join(OPT_IN)}")
    a = ap.parse_args(argv)
    mode_name = "quick" if a.quick else "tiny" if a.tiny else "full"
    cfg = MODES[mode_name]
    chosen = [s.strip() for s in a.sections.split(",") if s.strip()]
    unknown = set(chosen) - set(SECTIONS) - set(OPT_IN)
    if unknown:
        ap.error(f"unknown sections {sorted(unknown)}")
    command = "python -m bench.run " + " ".join(shlex.quote(x) for x in (argv if argv is not None else sys.argv[1:]))
    mach, vers = machine(), versions()
    t0 = time.perf_counter()
    sections: dict[str, dict] = {}

    def section(title: str, fn) -> None:
        t = time.perf_counter()
        print(f"[bench] {title} …", flush=True)
        sections[title] = {**fn(), "intro": INTROS[title]}
        print(f"[bench] {title}: {time.perf_counter() - t:.0f} s", flush=True)

    if "conversion" in chosen:
        section("Per-series conversion", lambda: conversion.run(cfg["conv"], cfg["conv_runs"]))
    if "curation" in chosen:
        section("Curation cost per series", lambda: curation.run(cfg["cur"], cfg["cur_runs"]))
    if "runcost" in chosen:
        section("Whole-run cost per series", lambda: run_cost.run(**cfg["runcost"]))
    if "flows" in chosen or "rss" in chosen:
        section("Scaling and memory", lambda: scaling.run(
            cfg["archive"], cfg["flow_reps"], cfg["rss"] if "rss" in chosen else [], cfg["rss_runs"],
            flows="flows" in chosen))
    if "catalog" in chosen:
        section("Catalog at Duke-110K size", lambda: catalog_scale.run(cfg["scale"], cfg["query_runs"]))
    if "volumes" in chosen:
        section("Volume-recipe data loading", lambda: volume_loading.run(**cfg["vol"]))
    if "audit" in chosen:
        section("PHI audit on real vendor data", lambda: audit_share.section(
            audit_share.CASES if mode_name == "full" else audit_share.CASES[:1]))
    if "ingest" in chosen:
        section("NIfTI/BIDS ingest", lambda: ingest_cost.run(**cfg["ingest"]))
    if "gpu" in chosen:
        section("GPU pretraining", lambda: gpu_pretrain.section(tiny=mode_name != "full"))
        section("GPU volume pretraining", lambda: gpu_pretrain3d.section(tiny=mode_name != "full"))
    if "scale" in chosen:
        section("Scale: the curate deployment on PostgreSQL", lambda: scale.section(list(cfg["scale_n"])))
    elif mode_name == "full" and scale_record.RECORDED.exists():   # opt-in (an hour): the last recorded run
        section("Scale: the curate deployment on PostgreSQL", scale_record.recorded_section)
    elapsed = time.perf_counter() - t0
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(render(command, mach, vers, sections, elapsed, mode_name))
    if a.json:
        a.json.write_text(json.dumps({k: v.get("raw") for k, v in sections.items()}, default=str, indent=1))
    for s in sections.values():
        for t in s["targets"]:
            print(f"  {'MET    ' if t['met'] else 'NOT MET'} {t['name']}: {t['measured']} (target {t['target']})")
    print(f"[bench] wrote {a.out} in {elapsed / 60:.1f} min", flush=True)
    return 0 if all_finite(sections) else 1


if __name__ == "__main__":
    sys.exit(main())
