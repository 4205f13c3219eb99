"""After a pretraining run: the loss-curve picture and the ``models`` catalog row."""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless workers
import matplotlib.pyplot as plt  # noqa: E402

from mrifoundry.catalog.schema import MODELS  # noqa: E402
from mrifoundry.catalog.store import derived_lock, upsert  # noqa: E402
from mrifoundry.catalog.views import build_research_db  # noqa: E402
from mrifoundry import code_version  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    """metrics.jsonl → records; a resumed run appends, so a repeated iteration keeps its last line."""
    if not path.exists():
        return []
    by_it: dict[int, dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by_it[int(r["iteration"])] = r
    return [by_it[k] for k in sorted(by_it)]


_NOT_LOSSES = {"iteration", "total", "epoch", "lr", "wd", "momentum", "teacher_temp", "images_per_s"}


def plot_loss_curve(records: list[dict], png: Path, title: str) -> Path:
    """Total and component losses against iteration (log y when positive), plus the lr."""
    fig, (ax, ax_lr) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, height_ratios=(3, 1))
    its = [r["iteration"] for r in records]
    # the total, then every term the objective logged (DINO/iBOT/KoLeo, Triad's recon/text, …)
    terms = [k for k in dict.fromkeys(k for r in records for k in r) if k not in _NOT_LOSSES]
    marker = "o" if len(records) < 3 else None     # a one-step run still shows its point
    for key in ["loss"] + [k for k in terms if k != "loss"]:
        ys = [r.get(key) for r in records]
        if any(y is not None for y in ys):
            ax.plot(its, ys, label=key, lw=1.5 if key == "loss" else 1.0, marker=marker)
    ax.set_ylabel("loss")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=10)
    ax_lr.plot(its, [r.get("lr") for r in records], color="tab:gray", marker=marker)
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    tmp = png.with_name(f".{png.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(png)
    return png


def register_model(research: Path, row: dict) -> None:
    """Upsert the run's ``models`` row and refresh the catalog views."""
    row = {**row, "finished_at": dt.datetime.now(dt.timezone.utc), "code_version": code_version()}
    with derived_lock(research):
        upsert(research, MODELS, [row])
        build_research_db(research)


def summary_markdown(row: dict, records: list[dict]) -> str:
    last = records[-1] if records else {}
    lines = [f"# Pretraining `{row['model_id']}`", "",
             f"- recipe **{row['recipe']}** ({row['objective']}, {row['arch']}, init {row['init']})",
             f"- {row['n_slices']} slices, {row['iterations']} iterations, {row['epochs']} epoch(s) done, "
             f"world size {row['world_size']}",
             f"- final loss {row['final_loss']:.4f}; throughput {row['images_per_s']:.1f} images/s",
             f"- teacher checkpoint (MRI-CORE layout): `{row['checkpoint_path']}`", ""]
    if last:
        lines += ["| metric | last value |", "|---|---|"]
        lines += [f"| {k} | {v:.5g} |" for k, v in last.items() if isinstance(v, float)]
    return "\n".join(lines)
