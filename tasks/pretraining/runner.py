"""The ``pretrain`` pipeline as a plain function: a catalog SQL query → a pretrained encoder.

:func:`run_pretrain` resolves the recipe (tasks/pretraining/recipes.py) and the query (the
recipe's default, minus the patients of ``exclude_overlap``'s downstream datasets), writes the
run's inputs (slices, BrainFound's contrast stacks, or volumes), trains — in this process for
``nproc=1``, under torchrun for more (launch.py) — then draws the loss curve and upserts the
``models`` row (report.py). BrainSegFounder's ``stage2_query`` is a second run,
``<run_name>-stage2``, started from the first one's weights. Re-running a run name resumes it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mrifoundry.errors import UsageError
from mrifoundry import settings
from mrifoundry.params import PretrainParams
from mrifoundry.tasks.pretraining import launch
from mrifoundry.tasks.pretraining import report
from mrifoundry.tasks.ingest.labelled3d.overlap import exclude_overlap
from mrifoundry.tasks.pretraining.recipes import SliceRun, VolumeRun, recipe

__all__ = ["run_pretrain"]

log = logging.getLogger(__name__)

Say = Callable[[str], None]

#: the flow's (and CLI's) result: what a caller needs to find the run
SUMMARY = ("iterations", "epochs", "final_loss", "images_per_s", "checkpoint_path", "loss_curve_path")


@dataclass
class _Stage:
    model_id: str
    run_dir: Path
    query: str
    cfg: SliceRun | VolumeRun
    init: str
    init_state: Path | None = None     # BrainSegFounder's stage 2: stage 1's train state


def run_pretrain(params: PretrainParams, *, progress: Say | None = None) -> dict:
    """Pretrain ``params.recipe`` on what ``params.query`` selects from the catalog under ``params.out``.

    Returns the last stage's summary — model_id, run_dir, iterations, epochs, final_loss,
    images_per_s, checkpoint_path and loss_curve_path (relative to OUT/research) — plus
    ``summary_markdown`` (the run's report) and ``loss_curve_png`` (absolute path).

    Raises:
        KeyError: unknown recipe; ValueError: unknown override, ``stage2_query`` for a recipe
            other than BrainSegFounder, too few training items; RuntimeError: torchrun failed.
    """
    say = progress or log.info
    overrides = dict(params.overrides or {})
    cfg = recipe(params.recipe, **overrides)
    query = params.query or launch.default_query(cfg)
    for dataset_id in params.exclude_overlap or []:
        query = exclude_overlap(query, dataset_id)
    research = settings.research_dir(params.out)
    name = params.run_name or launch.default_run_name(params.recipe, query, overrides)
    run_dir = research / "models" / name
    stages = [_Stage(name, run_dir, query, cfg, cfg.init if cfg.kind == "slices" else "random")]
    if params.stage2_query:
        if cfg.kind != "volumes" or cfg.method != "brainsegfounder":
            raise UsageError("stage2_query is for BrainSegFounder recipes")
        stages.append(_Stage(f"{name}-stage2", research / "models" / f"{name}-stage2", params.stage2_query,
                             cfg.replace(lr=cfg.stage2_lr), f"stage 1 ({name})", run_dir / "train_state.pt"))
    result: dict = {}
    for st in stages:
        row = _train(st, params, research, say)
        result = _report(research, st.run_dir, row)
    return result


def _train(st: _Stage, params: PretrainParams, research: Path, say: Say) -> dict:
    """The stage's inputs, its training and its ``models`` row (without the loss curve)."""
    cfg, on_log = st.cfg, _on_log(say)
    t0 = time.time()
    if cfg.kind == "volumes":
        n, left_out = launch.write_volumes(research, st.query, st.run_dir, cfg.method)
        if left_out:
            say(f"PRISM: {left_out} of {n + left_out} series have no second series in their exam and are left out")
        say(f"run {st.model_id}: {n} volumes, recipe {params.recipe} ({cfg.method}, {cfg.encoder})")
        # one decoded-volume cache for every run of the catalog (tasks/data/volume_cache.py)
        res = launch.train_volumes_run(st.run_dir, cfg.to_dict(), params.resume, params.nproc, on_log,
                                       str(st.init_state) if st.init_state else None,
                                       str(research / "cache" / "volumes"))
        objective, arch = cfg.method, cfg.encoder
    else:
        if cfg.inputs == "contrast_stacks":
            n, exams, skipped = launch.write_stacks(research, st.query, st.run_dir, cfg.global_size)
            for s in skipped:
                log.warning("exam %s left out of the contrast stacks: %s", s["exam_id"], s["reason"])
            say(f"{n} contrast stacks from {exams} exams ({len(skipped)} left out)")
        else:
            n = launch.write_slices(research, st.query, st.run_dir, cfg.normalization)
        say(f"run {st.model_id}: {n} slices, recipe {params.recipe} ({cfg.objective}, {cfg.arch}, init {cfg.init})")
        res = launch.train_slices(st.run_dir, cfg.to_dict(), settings.expand_home(params.init_weights),
                                  params.resume, params.nproc, on_log)
        objective, arch = cfg.objective, cfg.arch
    say(f"trained {res['iterations']}/{res['total_iterations']} iterations in {time.time() - t0:.0f} s")
    return launch.model_row(research, st.run_dir, res, kind=cfg.kind, model_id=st.model_id, recipe=params.recipe,
                            objective=objective, arch=arch, init=st.init, query=st.query, n=n,
                            world_size=params.nproc)


def _on_log(say: Say) -> launch.OnLog:
    def on_log(r: dict) -> None:
        say(f"iteration {r['iteration']}/{r['total']} (epoch {r['epoch']:.2f}) loss {r['loss']:.4f}, "
            f"{r['images_per_s']:.1f} images/s, lr {r['lr']:.2e}")
    return on_log


def _report(research: Path, run_dir: Path, row: dict) -> dict:
    """Loss curve, ``models`` row, summary."""
    records = report.read_metrics(run_dir / "metrics.jsonl")
    png = report.plot_loss_curve(records, run_dir / "loss_curve.png", f"{row['model_id']} ({row['recipe']})")
    row = {**row, "loss_curve_path": str(png.relative_to(research))}
    report.register_model(research, row)
    return {"model_id": row["model_id"], "run_dir": str(run_dir), **{k: row[k] for k in SUMMARY},
            "summary_markdown": report.summary_markdown(row, records), "loss_curve_png": str(png)}
