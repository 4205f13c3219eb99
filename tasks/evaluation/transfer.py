"""Transfer analysis: does a model's few-shot gain track the data's distance to pretraining?

One point per downstream dataset: ``gain`` (e.g. few-shot Dice of our model minus a
baseline's) against ``frd`` (FRD of the dataset to the pretraining set, ``tasks.evaluation.frd``), with
Pearson and Spearman correlations from ``scipy.stats`` and a labelled scatter plot with a
least-squares line, in the manner of MRI-CORE's figure 4.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import stats


def _clean(rows: list[dict]) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    names, xs, ys, excluded = [], [], [], []
    for r in rows:
        missing = {"dataset", "gain", "frd"} - set(r)
        if missing:
            raise ValueError(f"row {r!r} lacks {sorted(missing)}")
        x, y = float(r["frd"]), float(r["gain"])
        # FRD(D, D) is -inf in frd-score's v1 (log of d² <= 0): no place on a linear axis
        if not (math.isfinite(x) and math.isfinite(y)):
            excluded.append(str(r["dataset"]))
            continue
        names.append(str(r["dataset"]))
        xs.append(x)
        ys.append(y)
    return names, np.asarray(xs), np.asarray(ys), excluded


def transfer_analysis(rows: list[dict], png_path: str | Path, *, x_label: str = "FRD to pretraining set (FRDv1)",
                      y_label: str = "few-shot gain", title: str | None = None) -> dict:
    """Correlate ``gain`` with ``frd`` over datasets and plot it to ``png_path``.

    ``rows``: one dict per dataset with ``dataset``, ``gain`` and ``frd``; rows with a
    non-finite value are left out and listed under ``excluded``.

    Returns ``{"n", "datasets", "excluded", "pearson": {"r", "p"}, "spearman": {"r", "p"},
    "slope", "intercept", "png"}`` (slope/intercept of gain on FRD, least squares).

    Raises:
        ValueError: fewer than 3 usable rows, or a constant gain or FRD (r undefined).
    """
    names, x, y, excluded = _clean(rows)
    if len(x) < 3:
        raise ValueError(f"{len(x)} usable datasets: a correlation needs at least 3")
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        raise ValueError("gain or FRD is constant across datasets: the correlation is undefined")
    pr = stats.pearsonr(x, y)
    sr = stats.spearmanr(x, y)
    fit = stats.linregress(x, y)

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # a bare Figure + Agg canvas: no pyplot state, no global backend switch
    fig = Figure(figsize=(5.5, 4.5), dpi=150)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(x, y, s=36, color="tab:blue", zorder=3)
    for name, xi, yi in zip(names, x, y):
        ax.annotate(name, (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=8)
    xx = np.linspace(x.min(), x.max(), 50)
    ax.plot(xx, fit.intercept + fit.slope * xx, color="tab:red", lw=1.5, zorder=2)
    ax.axhline(0.0, color="0.7", lw=0.8, zorder=1)
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(title or f"Pearson r={pr.statistic:.2f} (p={pr.pvalue:.2g}), "
                          f"Spearman ρ={sr.statistic:.2f} (p={sr.pvalue:.2g})", fontsize=9)
    fig.tight_layout()
    png = Path(png_path)
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, format="png")

    return {
        "n": len(x),
        "datasets": names,
        "excluded": excluded,
        "pearson": {"r": float(pr.statistic), "p": float(pr.pvalue)},
        "spearman": {"r": float(sr.statistic), "p": float(sr.pvalue)},
        "slope": float(fit.slope),
        "intercept": float(fit.intercept),
        "png": str(png),
    }


__all__ = ["transfer_analysis"]
