"""Flow ``pretrain``: a catalog SQL query → a pretrained encoder.

Slice recipes (MRI-CORE's DINOv2, MAE, BrainFound's contrast stacks) train with
tasks/pretraining/slices.py; volume recipes (Triad, BrainSegFounder, PRISM) with
tasks/pretraining/volumes.py — in this process for ``nproc=1``, under torchrun for more
(tasks/pretraining/launch.py). Wiring only: the run's inputs, training, the report and the
``models`` row (tasks/pretraining/report.py). Re-running with the same ``run_name`` resumes the run.
"""
from __future__ import annotations

import time
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, \
    update_progress_artifact

from mrifoundry.flows.params import expand_home, research_dir
from mrifoundry.models.recipes import recipe as get_recipe
from mrifoundry.tasks.pretraining import launch
from mrifoundry.tasks.pretraining import report as pretrain_report


@task(name="select-slices")
def select_slices_task(research: str, query: str, run_dir: str) -> int:
    return launch.write_slices(Path(research), query, Path(run_dir))


@task(name="build-contrast-stacks")
def build_stacks_task(research: str, query: str, run_dir: str, size: int) -> int:
    """BrainFound: the query's brain series → axial T1/T2/FLAIR stacks (RGB PNG) → RUN/slices.txt."""
    logger = get_run_logger()
    n, exams, skipped = launch.write_stacks(Path(research), query, Path(run_dir), size)
    for s in skipped:
        logger.warning("exam %s left out of the contrast stacks: %s", s["exam_id"], s["reason"])
    logger.info("%d contrast stacks from %d exams (%d left out)", n, exams, len(skipped))
    return n


@task(name="select-volumes")
def select_volumes_task(research: str, query: str, run_dir: str, method: str) -> int:
    """The query's volumes → RUN/volumes.json (+ RUN/texts.npy, description embeddings, for Triad)."""
    n, left_out = launch.write_volumes(Path(research), query, Path(run_dir), method)
    if left_out:
        get_run_logger().info("PRISM: %d of %d series have no second series in their exam and are left out",
                              left_out, n + left_out)
    return n


def _progress_logger(run: Path):
    logger = get_run_logger()
    progress = create_progress_artifact(0.0, description=f"pretrain {run.name}: iterations")

    def on_log(r: dict) -> None:
        logger.info("iteration %d/%d (epoch %.2f) loss %.4f, %.1f images/s, lr %.2e",
                    r["iteration"], r["total"], r["epoch"], r["loss"], r["images_per_s"], r["lr"])
        update_progress_artifact(progress, 100.0 * r["iteration"] / max(r["total"], 1))
    return on_log


@task(name="train")
def train_task(run_dir: str, config: dict, init_weights: str | None, resume: bool, nproc: int) -> dict:
    """Train in this process (nproc=1) or under torchrun (nproc>1: DDP, NCCL on GPUs, gloo on CPU)."""
    t0 = time.time()
    result = launch.train_slices(Path(run_dir), config, init_weights, resume, nproc, _progress_logger(Path(run_dir)))
    get_run_logger().info("trained %d/%d iterations in %.0f s", result["iterations"], result["total_iterations"],
                          time.time() - t0)
    return result


@task(name="train-volumes")
def train_volumes_task(run_dir: str, config: dict, resume: bool, nproc: int, init_state: str | None = None,
                       cache_dir: str | None = None) -> dict:
    """Volume recipes in this process (nproc=1) or under torchrun (DDP)."""
    t0 = time.time()
    result = launch.train_volumes_run(Path(run_dir), config, resume, nproc, _progress_logger(Path(run_dir)),
                                      init_state, cache_dir)
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
             overrides: dict | None = None, stage2_query: str | None = None,
             exclude_overlap: list[str] | None = None) -> dict:
    """Pretrain an encoder on what ``query`` selects from the catalog under ``out``.

    ``recipe`` (models/recipes.py): slices — mri-core, mae, brainfound (+ ``-tiny``);
    volumes — triad, triad-unet, brainsegfounder, prism (+ ``-tiny``); adjusted by
    ``overrides``. ``query`` defaults to the recipe's (training slices, converted volumes,
    paired volumes for PRISM, brain series for BrainFound). ``init_weights``: local SAM
    checkpoint for init=sam recipes ({home} expands to MRIFOUNDRY_HOME).
    ``stage2_query``: BrainSegFounder's second stage (model ``<run_name>-stage2``).
    ``exclude_overlap``: downstream dataset ids whose patients (by voxel digest or subject key)
    are dropped from ``query``, which must then return ``series_id`` (tasks/evaluation/overlap.py);
    the query stored in the models row is the filtered one.
    Checkpoints go to OUT/research/models/<run_name>/.
    """
    logger = get_run_logger()
    overrides = dict(overrides or {})
    cfg = get_recipe(recipe, **overrides)
    query = query or launch.default_query(cfg)
    if exclude_overlap:
        from mrifoundry.tasks.evaluation.overlap import exclude_overlap as without
        for dataset_id in exclude_overlap:
            query = without(query, dataset_id)
    research = research_dir(out)
    name = run_name or launch.default_run_name(recipe, query, overrides)
    run_dir = research / "models" / name
    if cfg.kind == "volumes":
        return _pretrain_volumes(cfg, research, query, recipe, name, run_dir, nproc, resume, stage2_query)
    if cfg.inputs == "contrast_stacks":
        n = build_stacks_task(str(research), query, str(run_dir), cfg.global_size)
    else:
        n = select_slices_task(str(research), query, str(run_dir))
    logger.info("run %s: %d slices, recipe %s (%s, %s, init %s)", name, n, recipe, cfg.objective, cfg.arch, cfg.init)
    res = train_task(str(run_dir), cfg.to_dict(), expand_home(init_weights), resume, nproc)
    row = launch.model_row(research, run_dir, res, kind="slices", model_id=name, recipe=recipe,
                           objective=cfg.objective, arch=cfg.arch, init=cfg.init, query=query, n=n, world_size=nproc)
    return _summary(report_task(str(research), str(run_dir), row), run_dir)


_SUMMARY = ("iterations", "epochs", "final_loss", "images_per_s", "checkpoint_path", "loss_curve_path")


def _summary(row: dict, run_dir: Path) -> dict:
    return {"model_id": row["model_id"], "run_dir": str(run_dir), **{k: row[k] for k in _SUMMARY}}


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
        row = launch.model_row(research, rdir, res, kind="volumes", model_id=model_id, recipe=recipe,
                               objective=c.method, arch=c.encoder,
                               init=f"stage 1 ({name})" if init_state else "random", query=q, n=n, world_size=nproc)
        result = _summary(report_task(str(research), str(rdir), row), rdir)
    return result
