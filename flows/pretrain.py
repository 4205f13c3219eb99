"""Flow ``pretrain``: a catalog SQL query → a pretrained encoder (MRI-CORE's DINOv2 recipe, or MAE).

Wiring only: the slice query (tasks/slice_dataset.py), training (tasks/pretrain.py, in
this process for ``nproc=1``, under torchrun for more), the report and the ``models`` row
(tasks/pretrain_report.py). Re-running with the same ``run_name`` resumes the run.
"""
from __future__ import annotations

import hashlib
import json
import os
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
from tasks import pretrain_report
from tasks.slice_dataset import query_slices

DEFAULT_QUERY = "SELECT png_file FROM training_slices"


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


@task(name="train")
def train_task(run_dir: str, config: dict, init_weights: str | None, resume: bool, nproc: int) -> dict:
    """Train in this process (nproc=1) or under torchrun (nproc>1: DDP, NCCL on GPUs, gloo on CPU)."""
    logger = get_run_logger()
    run = Path(run_dir)
    paths = (run / "slices.txt").read_text().splitlines()
    progress = create_progress_artifact(0.0, description=f"pretrain {run.name}: iterations")
    t0 = time.time()

    def on_log(r: dict) -> None:
        logger.info("iteration %d/%d (epoch %.2f) loss %.4f, %.1f images/s, lr %.2e",
                    r["iteration"], r["total"], r["epoch"], r["loss"], r["images_per_s"], r["lr"])
        update_progress_artifact(progress, 100.0 * r["iteration"] / max(r["total"], 1))

    if nproc <= 1:
        from models.recipes import PretrainConfig
        from tasks.pretrain import train
        cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
        res = train(cfg, [p for p in paths if p], run, init_weights=Path(init_weights) if init_weights else None,
                    resume=resume, on_log=on_log)
        result = {k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}
    else:
        job = run / "job.json"
        job.write_text(json.dumps({"config": config, "paths_file": str(run / "slices.txt"), "run_dir": str(run),
                                   "init_weights": init_weights, "resume": resume}))
        (run / "result.json").unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "tasks.pretrain", str(job)]
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
        tail: list[str] = []
        for line in proc.stdout:
            line = line.rstrip()
            try:
                on_log(json.loads(line))
            except (ValueError, KeyError, TypeError):
                tail = (tail + [line])[-40:]
        if proc.wait() != 0:
            raise RuntimeError(f"torchrun exited with {proc.returncode}:\n" + "\n".join(tail))
        result = json.loads((run / "result.json").read_text())
    logger.info("trained %d/%d iterations in %.0f s", result["iterations"], result["total_iterations"],
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
def pretrain(out: str | None = None, query: str = DEFAULT_QUERY, recipe: str = "mri-core",
             init_weights: str | None = None, run_name: str | None = None, nproc: int = 1, resume: bool = True,
             overrides: dict | None = None) -> dict:
    """Pretrain an encoder on the slices ``query`` selects from the catalog under ``out``.

    ``recipe``: mri-core | mri-core-tiny | mae | mae-tiny (models/recipes.py), adjusted by
    ``overrides``; ``init_weights``: local SAM checkpoint for init=sam recipes ({home}
    expands to MRIFOUNDRY_HOME). Checkpoints go to OUT/research/models/<run_name>/.
    """
    logger = get_run_logger()
    overrides = dict(overrides or {})
    cfg = get_recipe(recipe, **overrides)
    research = _research(out)
    name = run_name or default_run_name(recipe, query, overrides)
    run_dir = research / "models" / name
    n = select_slices_task(str(research), query, str(run_dir))
    logger.info("run %s: %d slices, recipe %s (%s, %s, init %s)", name, n, recipe, cfg.objective, cfg.arch, cfg.init)
    res = train_task(str(run_dir), cfg.to_dict(), _expand(init_weights), resume, nproc)
    ckpt = Path(res["checkpoint"]) if res.get("checkpoint") else None
    if ckpt is None:
        done = sorted(run_dir.glob("eval/training_*/teacher_checkpoint.pth"),
                      key=lambda p: int(p.parent.name.split("_")[1]))
        ckpt = done[-1] if done else None
    row = {"model_id": name, "recipe": recipe, "objective": cfg.objective, "arch": cfg.arch, "init": cfg.init,
           "query": query, "n_slices": n, "epochs": res["epochs_done"], "iterations": res["iterations"],
           "world_size": nproc, "final_loss": res["final_loss"], "images_per_s": res["images_per_s"],
           "checkpoint_path": str(ckpt.relative_to(research)) if ckpt else None}
    row = report_task(str(research), str(run_dir), row)
    return {"model_id": name, "run_dir": str(run_dir), **{k: row[k] for k in
            ("iterations", "epochs", "final_loss", "images_per_s", "checkpoint_path", "loss_curve_path")}}
