"""MRI-CORE's epoch study with a linear-probe proxy: every saved checkpoint of a pretrain run, probed.

The paper picked its epoch-4 checkpoint by few-shot 3D DSC on a development set (Fig. 2c: 2, 4,
8 … 64 epochs). Here each teacher checkpoint a slice run saved (``eval/training_<it>/``, every
``checkpoint_every`` iterations and at the end) is scored by linear probing — a cheaper proxy
the issue names — with the same query, split seeds and repeats for all; the best by balanced
accuracy is named, and a plot of both accuracies against the epoch is written. Each point is an
``evaluations`` row (eval_id ``<eval_id>-it<iteration>``), so the sweep can be compared like any
other evaluation.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

from mrifoundry import settings
from mrifoundry.errors import UsageError
from mrifoundry.params import EpochSweepParams, ProbeParams
from mrifoundry.tasks.evaluation.runs import run_linear_probe
from mrifoundry.tasks.pretraining.pretrained import pretrained_run

__all__ = ["run_epoch_sweep", "saved_checkpoints"]

_IT = re.compile(r"training_(\d+)$")


def saved_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(iteration, teacher checkpoint) of every ``eval/training_<it>/`` of a run, by iteration."""
    found = []
    for d in (run_dir / "eval").glob("training_*"):
        m = _IT.search(d.name)
        if m and (d / "teacher_checkpoint.pth").is_file():
            found.append((int(m.group(1)), d / "teacher_checkpoint.pth"))
    return sorted(found)


def _iterations_per_epoch(run_dir: Path) -> float | None:
    metrics = run_dir / "metrics.jsonl"
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        r = json.loads(line)
        if r.get("epoch"):
            return r["iteration"] / r["epoch"]
    return None


def run_epoch_sweep(params: EpochSweepParams, *, progress: Callable[[str], None] | None = None) -> dict:
    """Probe every saved checkpoint of pretrain run ``params.pretrained``; name the best.

    Raises:
        NotFound: no such run; UsageError: a volume run, or fewer than one saved checkpoint.
    """
    say = progress or (lambda line: None)
    research = settings.research_dir(params.out)
    run = pretrained_run(research, params.pretrained)
    if run.entry != "mri-core":
        raise UsageError(f"{params.pretrained!r} is a {run.objective} volume run; the epoch sweep probes slice runs")
    run_dir = Path(run.checkpoint).parents[2]
    points, per_epoch = [], _iterations_per_epoch(run_dir)
    ckpts = saved_checkpoints(run_dir)
    if not ckpts:
        raise UsageError(f"run {params.pretrained!r} has no saved checkpoint under {run_dir / 'eval'}")
    prefix = params.eval_id or f"sweep-{params.pretrained}"
    for n, (it, ckpt) in enumerate(ckpts, 1):
        probe = ProbeParams(out=params.out, model=run.entry, weights=str(ckpt), arch=run.arch, query=params.query,
                            eval_id=f"{prefix}-it{it}", epochs=params.probe_epochs, seed=params.seed,
                            repeats=params.repeats)
        res = run_linear_probe(probe)
        epoch = it / per_epoch if per_epoch else None
        points.append({"iteration": it, "epoch": epoch, "eval_id": probe.eval_id, "accuracy": res["accuracy"],
                       "balanced_accuracy": res["balanced_accuracy"]})
        say(f"{n}/{len(ckpts)} checkpoints: iteration {it} balanced accuracy {res['balanced_accuracy']:.3f}")
    best = max(points, key=lambda p: (p["balanced_accuracy"], -p["iteration"]))   # ties: the earlier one
    png = _plot(points, research / "evaluations" / prefix / "sweep.png", params.pretrained)
    lines = ["| iteration | epoch | accuracy | balanced accuracy |", "|---|---|---|---|"]
    for p in points:
        epoch = "" if p["epoch"] is None else f"{p['epoch']:.2f}"
        lines.append(f"| {p['iteration']} | {epoch} | {p['accuracy']:.3f} | {p['balanced_accuracy']:.3f} |")
    md = (f"# Epoch sweep `{prefix}` ({params.pretrained})\n\nbest: iteration {best['iteration']} "
          f"(balanced accuracy {best['balanced_accuracy']:.3f})\n\n" + "\n".join(lines))
    return {"points": points, "best": best, "png": str(png), "markdown": md}


def _plot(points: list[dict], path: Path, title: str) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    x = [p["epoch"] if p["epoch"] is not None else p["iteration"] for p in points]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(x, [p["accuracy"] for p in points], marker="o", label="accuracy")
    ax.plot(x, [p["balanced_accuracy"] for p in points], marker="s", label="balanced accuracy")
    ax.set_xlabel("epoch" if points[0]["epoch"] is not None else "iteration")
    ax.set_ylabel("linear probe")
    ax.set_title(f"epoch sweep: {title}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
