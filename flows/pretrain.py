"""Flow ``pretrain``: a catalog SQL query → a pretrained encoder.

Slice recipes (MRI-CORE's DINOv2, MAE, BrainFound's contrast stacks) train with
tasks/pretraining/slices.py; volume recipes (Triad, BrainSegFounder, PRISM) with tasks/pretraining/volumes.py —
in this process for ``nproc=1``, under torchrun for more. Wiring only: the query
(tasks/data/slices.py, tasks/data/volumes.py, tasks/data/contrast_stacks.py), the
description embeddings (tasks/data/text_embed.py), training, the report and the ``models`` row
(tasks/pretraining/report.py). Re-running with the same ``run_name`` resumes the run.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, \
    update_progress_artifact

from models.recipes import recipe as get_recipe
from mrifoundry import REPO_ROOT
from mrifoundry.settings import Settings
from tasks.pretraining import report as pretrain_report
from tasks.data.slices import query_slices

DEFAULT_QUERY = "SELECT png_file FROM training_slices"


def default_query(cfg) -> str:
    """The query a recipe trains on when the caller gives none."""
    if cfg.kind == "volumes":
        from tasks.data.volumes import DEFAULT_QUERY as VOLUMES, PAIRED_QUERY
        return PAIRED_QUERY if cfg.method == "prism" else VOLUMES
    if cfg.inputs == "contrast_stacks":
        from tasks.data.contrast_stacks import DEFAULT_QUERY as STACKS
        return STACKS
    return DEFAULT_QUERY


def _expand(v: str | None) -> str | None:
    return v.replace("{home}", str(Settings().home)) if isinstance(v, str) else v


def _research(out: str | None) -> Path:
    s = Settings()
    root = Path(_expand(out)) if out else (s.out or s.home / "out")
    return Path(root).resolve() / "research"


def default_run_name(recipe: str, query: str, overrides: dict) -> str:
    """Same recipe, query and overrides → same name → a re-run resumes instead of restarting."""
    key = json.dumps([recipe, query, overrides], sort_keys=True)
    return f"{recipe}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


@task(name="select-slices")
def select_slices_task(research: str, query: str, run_dir: str) -> int:
    rows = query_slices(Path(research), query)
    paths = Path(run_dir) / "slices.txt"
    paths.parent.mkdir(parents=True, exist_ok=True)
    paths.write_text("\n".join(r["png_file"] for r in rows) + "\n")
    return len(rows)


def _progress_logger(run: Path):
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"pretrain {run.name}: iterations")

    def on_log(r: dict) -> None:
        logger.info("iteration %d/%d (epoch %.2f) loss %.4f, %.1f images/s, lr %.2e",
                    r["iteration"], r["total"], r["epoch"], r["loss"], r["images_per_s"], r["lr"])
        update_progress_artifact(progress, 100.0 * r["iteration"] / max(r["total"], 1))
    return on_log


def _torchrun(module: str, job: Path, nproc: int, on_log) -> dict:
    """``python -m torch.distributed.run -m <module> JOB``; rank 0's logged records go to
    ``on_log``; returns its ``result.json``."""
    (job.parent / "result.json").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", module, str(job)]
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    tail: list[str] = []
    for line in proc.stdout:
        line = line.rstrip()
        try:
            on_log(json.loads(line))
        except (ValueError, KeyError, TypeError):
            tail = (tail + [line])[-40:]
    if proc.wait() != 0:
        raise RuntimeError(f"torchrun exited with {proc.returncode}:\n" + "\n".join(tail))
    return json.loads((job.parent / "result.json").read_text())


def _result_dict(res) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}


@task(name="train")
def train_task(run_dir: str, config: dict, init_weights: str | None, resume: bool, nproc: int) -> dict:
    """Train in this process (nproc=1) or under torchrun (nproc>1: DDP, NCCL on GPUs, gloo on CPU)."""
    run = Path(run_dir)
    on_log = _progress_logger(run)
    t0 = time.time()
    if nproc <= 1:
        from models.recipes import PretrainConfig
        from tasks.pretraining.slices import train
        paths = (run / "slices.txt").read_text().splitlines()
        res = train(PretrainConfig.from_dict(config), [p for p in paths if p], run,
                    init_weights=Path(init_weights) if init_weights else None, resume=resume, on_log=on_log)
        result = _result_dict(res)
    else:
        job = run / "job.json"
        job.write_text(json.dumps({"config": config, "paths_file": str(run / "slices.txt"), "run_dir": str(run),
                                   "init_weights": init_weights, "resume": resume}))
        result = _torchrun("tasks.pretraining.slices", job, nproc, on_log)
    get_run_logger().info("trained %d/%d iterations in %.0f s", result["iterations"], result["total_iterations"],
                          time.time() - t0)
    return result


@task(name="select-volumes")
def select_volumes_task(research: str, query: str, run_dir: str, method: str) -> int:
    """The query's volumes → RUN/volumes.json (+ RUN/texts.npy, description embeddings, for Triad)."""
    from tasks.data.volumes import query_volumes, select_pairs
    logger = get_run_logger()
    rows = query_volumes(Path(research), query)
    if method == "prism":
        paired = [r for r, p in zip(rows, select_pairs(rows)) if p]
        if len(paired) < len(rows):
            logger.info("PRISM: %d of %d series have no second series in their exam and are left out",
                        len(rows) - len(paired), len(rows))
        rows = paired
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    rows = [{k: (v if isinstance(v, (str, int, float, bool, type(None))) else str(v)) for k, v in r.items()}
            for r in rows]
    (run / "volumes.json").write_text(json.dumps(rows))
    if method == "triad":
        import numpy as np
        from tasks.data.text_embed import describe_series, embed_descriptions
        texts = embed_descriptions(rows, Path(research) / "models" / ".text-embeddings.parquet")
        np.save(run / "texts.npy", texts)
        logger.info("embedded %d descriptions (%d distinct) with all-MiniLM-L6-v2", len(rows),
                    len({describe_series(r) for r in rows}))
    return len(rows)


@task(name="build-contrast-stacks")
def build_stacks_task(research: str, query: str, run_dir: str, size: int) -> int:
    """BrainFound: the query's brain series → axial T1/T2/FLAIR stacks (RGB PNG) → RUN/slices.txt."""
    from tasks.data.contrast_stacks import brainfound_stacks
    logger = get_run_logger()
    run = Path(run_dir)
    built = brainfound_stacks(Path(research), run / "stacks", sql=query, size=size)
    for s in built.skipped:
        logger.warning("exam %s left out of the contrast stacks: %s", s["exam_id"], s["reason"])
    (run / "slices.txt").write_text("".join(r["png_file"] + "\n" for r in built.rows))
    logger.info("%d contrast stacks from %d exams (%d left out)", len(built.rows),
                len({r["exam_id"] for r in built.rows}), len(built.skipped))
    return len(built.rows)


@task(name="train-volumes")
def train_volumes_task(run_dir: str, config: dict, resume: bool, nproc: int, init_state: str | None = None,
                       cache_dir: str | None = None) -> dict:
    """Volume recipes in this process (nproc=1) or under torchrun (DDP)."""
    run = Path(run_dir)
    on_log = _progress_logger(run)
    rows_file, texts_file = run / "volumes.json", run / "texts.npy"
    t0 = time.time()
    if nproc <= 1:
        import numpy as np
        from models.recipes import VolumeConfig
        from tasks.pretraining.volumes import train_volumes
        res = train_volumes(VolumeConfig.from_dict(config), json.loads(rows_file.read_text()), run,
                            texts=np.load(texts_file) if texts_file.exists() else None,
                            init_state=Path(init_state) if init_state else None, resume=resume,
                            cache_dir=Path(cache_dir) if cache_dir else None, on_log=on_log)
        result = _result_dict(res)
    else:
        job = run / "job.json"
        job.write_text(json.dumps({"config": config, "rows_file": str(rows_file), "run_dir": str(run),
                                   "texts_file": str(texts_file) if texts_file.exists() else None,
                                   "init_state": init_state, "resume": resume, "cache_dir": cache_dir}))
        result = _torchrun("tasks.pretraining.volumes", job, nproc, on_log)
    get_run_logger().info("trained %d/%d iterations in %.0f s", result["iterations"], result["total_iterations"],
                          time.time() - t0)
    return result


@task(name="report")
def report_task(research: str, run_dir: str, row: dict) -> dict:
    run = Path(run_dir)
    records = pretrain_report.read_metrics(run / "metrics.jsonl")
    png = pretrain_report.plot_loss_curve(records, run / "loss_curve.png", f"{row['model_id']} ({row['recipe']})")
    row = {**row, "loss_curve_path": str(png.relative_to(research))}
    pretrain_report.register_model(Path(research), row)
    create_markdown_artifact(pretrain_report.summary_markdown(row, records), key="pretrain-summary",
                             description="pretraining run summary")
    create_link_artifact(f"file://{png}", link_text="loss curve (PNG)", key="pretrain-loss-curve")
    return row


@flow(name="pretrain", log_prints=False)
def pretrain(out: str | None = None, query: str | None = None, recipe: str = "mri-core",
             init_weights: str | None = None, run_name: str | None = None, nproc: int = 1, resume: bool = True,
             overrides: dict | None = None, stage2_query: str | None = None) -> dict:
    """Pretrain an encoder on what ``query`` selects from the catalog under ``out``.

    ``recipe`` (models/recipes.py): slices — mri-core, mae, brainfound (+ ``-tiny``);
    volumes — triad, triad-unet, brainsegfounder, prism (+ ``-tiny``); adjusted by
    ``overrides``. ``query`` defaults to the recipe's (training slices, converted volumes,
    paired volumes for PRISM, brain series for BrainFound). ``init_weights``: local SAM
    checkpoint for init=sam recipes ({home} expands to MRIFOUNDRY_HOME).
    ``stage2_query``: BrainSegFounder's second stage (model ``<run_name>-stage2``).
    Checkpoints go to OUT/research/models/<run_name>/.
    """
    logger = get_run_logger()
    overrides = dict(overrides or {})
    cfg = get_recipe(recipe, **overrides)
    query = query or default_query(cfg)
    research = _research(out)
    name = run_name or default_run_name(recipe, query, overrides)
    run_dir = research / "models" / name
    if cfg.kind == "volumes":
        return _pretrain_volumes(cfg, research, query, recipe, name, run_dir, nproc, resume, stage2_query)
    if cfg.inputs == "contrast_stacks":
        n = build_stacks_task(str(research), query, str(run_dir), cfg.global_size)
    else:
        n = select_slices_task(str(research), query, str(run_dir))
    logger.info("run %s: %d slices, recipe %s (%s, %s, init %s)", name, n, recipe, cfg.objective, cfg.arch, cfg.init)
    res = train_task(str(run_dir), cfg.to_dict(), _expand(init_weights), resume, nproc)
    ckpt = Path(res["checkpoint"]) if res.get("checkpoint") else None
    if ckpt is None:
        ckpt = _latest(run_dir, "eval/training_*/teacher_checkpoint.pth")
    row = {"model_id": name, "recipe": recipe, "objective": cfg.objective, "arch": cfg.arch, "init": cfg.init,
           "query": query, "n_slices": n, "epochs": res["epochs_done"], "iterations": res["iterations"],
           "world_size": nproc, "final_loss": res["final_loss"], "images_per_s": res["images_per_s"],
           "checkpoint_path": str(ckpt.relative_to(research)) if ckpt else None}
    row = report_task(str(research), str(run_dir), row)
    return {"model_id": name, "run_dir": str(run_dir), **{k: row[k] for k in
            ("iterations", "epochs", "final_loss", "images_per_s", "checkpoint_path", "loss_curve_path")}}


def _latest(run_dir: Path, pattern: str) -> Path | None:
    """The checkpoint of the highest iteration (the number after the ``_`` of its path:
    ``eval/training_<it>/…`` or ``checkpoints/encoder_<it>.pth``) — what a re-run of a
    finished run reports."""
    done = sorted(run_dir.glob(pattern),
                  key=lambda p: int(re.search(r"_(\d+)", str(p.relative_to(run_dir))).group(1)))
    return done[-1] if done else None


def _pretrain_volumes(cfg, research: Path, query: str, recipe: str, name: str, run_dir: Path, nproc: int,
                      resume: bool, stage2_query: str | None) -> dict:
    logger = get_run_logger()
    stages = [(name, run_dir, query, cfg, None)]
    if stage2_query:
        if cfg.method != "brainsegfounder":
            raise ValueError("stage2_query is for BrainSegFounder recipes")
        stages.append((f"{name}-stage2", research / "models" / f"{name}-stage2", stage2_query,
                       cfg.replace(lr=cfg.stage2_lr), run_dir / "train_state.pt"))
    result = {}
    for model_id, rdir, q, c, init_state in stages:
        n = select_volumes_task(str(research), q, str(rdir), c.method)
        logger.info("run %s: %d volumes, recipe %s (%s, %s)", model_id, n, recipe, c.method, c.encoder)
        # one decoded-volume cache for every run of the catalog (tasks/data/volume_cache.py)
        res = train_volumes_task(str(rdir), c.to_dict(), resume, nproc, str(init_state) if init_state else None,
                                 str(research / "cache" / "volumes"))
        ckpt = Path(res["checkpoint"]) if res.get("checkpoint") else _latest(rdir, "checkpoints/encoder_*.pth")
        row = {"model_id": model_id, "recipe": recipe, "objective": c.method, "arch": c.encoder,
               "init": f"stage 1 ({name})" if init_state else "random", "query": q, "n_slices": n,
               "epochs": res["epochs_done"], "iterations": res["iterations"], "world_size": nproc,
               "final_loss": res["final_loss"], "images_per_s": res["images_per_s"],
               "checkpoint_path": str(ckpt.relative_to(research)) if ckpt else None}
        row = report_task(str(research), str(rdir), row)
        result = {"model_id": model_id, "run_dir": str(rdir), **{k: row[k] for k in
                  ("iterations", "epochs", "final_loss", "images_per_s", "checkpoint_path", "loss_curve_path")}}
    return result
