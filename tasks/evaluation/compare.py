"""Does model A beat model B? Paired statistics over the per-repeat values of the catalog.

For every task — (dataset, kind, metric) of ``evaluations`` — each evaluation of the baseline
model is compared with every other evaluation of the task that has ``evaluation_repeats`` rows.
Repeats are paired by repeat index, and only where both ran with the same seed (the same split,
few-shot patients or k-means init); pairs with a non-finite value are left out. Per pair of
evaluations:

- mean and sample sd (ddof 1) of each side's paired values, and the mean difference
  (model − baseline);
- the paired Wilcoxon signed-rank test, two-sided (``scipy.stats.wilcoxon(model, baseline)``,
  zero_method ``wilcox``: zero differences are dropped before ranking). The method is chosen by
  scipy's own ``auto`` rule and stored: ``exact`` (no ties or zeros, n ≤ 50), ``permutation``
  (ties or zeros, n ≤ 13: all 2ⁿ sign flips, so exact as well), ``asymptotic`` (otherwise).
  When every difference is 0 no test is run and p = 1 (what scipy returns too). With n ≤ 5
  pairs the smallest two-sided p is 2/2ⁿ ≥ 0.0625: p < 0.05 needs 6 or more repeats;
- a 95 % bootstrap CI of the mean difference (``scipy.stats.bootstrap``, paired, resampling
  repeats; percentile by default, BCa optional; ``n_boot`` resamples, a fresh generator seeded
  with ``seed`` per comparison so each row can be recomputed alone). Constant differences d give
  the point interval [d, d] without resampling (BCa is undefined there); under 2 pairs no CI.

Rows go to the catalog's ``comparisons`` table; docs/evaluation.md (Statistics) shows how to
recompute a p-value from the catalog.
"""
from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy import stats

from mrifoundry import code_version, settings
from mrifoundry.catalog.schema import COMPARISONS
from mrifoundry.catalog.store import derived_lock, upsert
from mrifoundry.catalog.views import build_research_db, connect
from mrifoundry.errors import NotFound
from mrifoundry.params import CompareParams

__all__ = ["bootstrap_ci", "compare", "paired_wilcoxon", "run_compare"]


def paired_wilcoxon(x: np.ndarray, b: np.ndarray) -> dict:
    """Two-sided Wilcoxon signed-rank test of ``x − b``: statistic, p_value, test_method, n_nonzero."""
    d = np.asarray(x, float) - np.asarray(b, float)
    nz = d[d != 0]
    out = {"n_nonzero": int(nz.size), "statistic": None, "p_value": None}
    if d.size == 0:
        return {**out, "test_method": "none: no paired repeats"}
    if nz.size == 0:
        return {**out, "statistic": 0.0, "p_value": 1.0, "test_method": "none: all differences zero (p = 1)"}
    ties_or_zeros = nz.size < d.size or np.unique(np.abs(nz)).size < nz.size
    # scipy's method="auto", made explicit so the stored name is what ran
    if d.size > 50 or (ties_or_zeros and d.size > 13):
        method, name = "asymptotic", "asymptotic"
    elif ties_or_zeros:
        method, name = stats.PermutationMethod(), "permutation"
    else:
        method, name = "exact", "exact"
    res = stats.wilcoxon(x, b, zero_method="wilcox", alternative="two-sided", method=method)
    return {**out, "statistic": float(res.statistic), "p_value": float(res.pvalue), "test_method": name}


def _mean_diff(x, b, axis=-1):
    return np.mean(x - b, axis=axis)


def bootstrap_ci(x: np.ndarray, b: np.ndarray, *, n_boot: int = 10000, seed: int = 0,
                 method: str = "percentile") -> tuple[float | None, float | None, str]:
    """95 % paired bootstrap CI of mean(x − b): (low, high, description of the method)."""
    d = np.asarray(x, float) - np.asarray(b, float)
    if d.size < 2:
        return None, None, "none: fewer than 2 pairs"
    if np.ptp(d) == 0:
        return float(d[0]), float(d[0]), "point: constant differences"
    res = stats.bootstrap((np.asarray(x, float), np.asarray(b, float)), _mean_diff, paired=True, vectorized=True,
                          n_resamples=n_boot, confidence_level=0.95, method=method,
                          rng=np.random.default_rng(seed))
    lo, hi = (float(v) for v in (res.confidence_interval.low, res.confidence_interval.high))
    return (lo if math.isfinite(lo) else None, hi if math.isfinite(hi) else None,
            f"bootstrap {method}, paired, {n_boot} resamples, seed {seed}")


def _sd(v: np.ndarray) -> float | None:
    return float(np.std(v, ddof=1)) if v.size > 1 else None


def _load(research: Path, metrics: Sequence[str] | None, eval_ids: Sequence[str] | None) -> dict:
    """{(dataset, kind, metric): {eval_id: {"model", "values": {repeat: (seed, value)}}}}."""
    where, args = [], []
    for col, vals in (("r.metric", metrics), ("r.eval_id", eval_ids)):
        if vals:
            where.append(f"{col} IN ({', '.join('?' * len(vals))})")
            args += list(vals)
    sql = ("SELECT e.dataset, e.kind, r.metric, r.eval_id, e.model, r.repeat, r.seed, r.value "
           "FROM evaluation_repeats r JOIN evaluations e USING (eval_id, metric)"
           + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY 1, 2, 3, 4, 6")
    con = connect(research)
    try:
        rows = con.execute(sql, args).fetchall()
    finally:
        con.close()
    tasks: dict = {}
    for dataset, kind, metric, eval_id, model, rep, seed, value in rows:
        ev = tasks.setdefault((dataset, kind, metric), {}).setdefault(eval_id, {"model": model, "values": {}})
        ev["values"][rep] = (seed, value)
    return tasks


def _pair(a: dict, b: dict) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Values of ``a`` and ``b`` at the repeats both have, with the same seed, both finite."""
    reps = [r for r in sorted(set(a) & set(b)) if a[r][0] == b[r][0]
            and all(v is not None and math.isfinite(v) for v in (a[r][1], b[r][1]))]
    return (np.array([a[r][1] for r in reps], float), np.array([b[r][1] for r in reps], float),
            [int(a[r][0]) for r in reps])


def _compare_one(task: tuple, base_id: str, base: dict, other_id: str, other: dict, *, n_boot: int, seed: int,
                 ci_method: str) -> dict:
    x, b, seeds = _pair(other["values"], base["values"])
    lo, hi, ci_name = bootstrap_ci(x, b, n_boot=n_boot, seed=seed, method=ci_method)
    mean = (lambda v: float(np.mean(v)) if v.size else None)
    return {"dataset": task[0], "kind": task[1], "metric": task[2], "baseline_model": base["model"],
            "baseline_eval_id": base_id, "model": other["model"], "eval_id": other_id, "n_pairs": int(x.size),
            "seeds": json.dumps(seeds), "baseline_mean": mean(b), "baseline_sd": _sd(b), "mean": mean(x), "sd": _sd(x),
            "mean_diff": mean(x - b), **paired_wilcoxon(x, b), "ci_low": lo, "ci_high": hi, "ci_method": ci_name}


def _fmt(v, sd=None) -> str:
    if v is None:
        return "–"
    return f"{v:.4g}" + (f" ± {sd:.3g}" if sd is not None else "")


def _cell(text: str, width: int = 48) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|")
    return text if len(text) <= width else text[:width - 1] + "…"


def markdown(rows: list[dict], baseline: str) -> str:
    """The comparisons as a markdown table (mean ± sd; Δ = model − baseline with its 95 % CI)."""
    head = (f"# Comparison with `{baseline}`\n\nPaired by repeat (same seed); Δ = model − baseline, 95 % CI "
            "by paired bootstrap; p: two-sided Wilcoxon signed-rank.\n\n"
            "| dataset | kind | metric | model (eval) | n | model | baseline (eval) | Δ [95 % CI] | p (test) |\n"
            "|---|---|---|---|---|---|---|---|---|")
    lines = [f"| {_cell(r['dataset'])} | {r['kind']} | {r['metric']} | {r['model']} ({r['eval_id']}) | "
             f"{r['n_pairs']} | {_fmt(r['mean'], r['sd'])} | {_fmt(r['baseline_mean'], r['baseline_sd'])} "
             f"({r['baseline_eval_id']}) | "
             f"{_fmt(r['mean_diff'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | "
             f"{_fmt(r['p_value'])} ({r['test_method']}) |" for r in rows]
    return "\n".join([head, *lines])


def compare(research: Path, baseline: str, *, metrics: Sequence[str] | None = None,
            eval_ids: Sequence[str] | None = None, n_boot: int = 10000, seed: int = 0,
            ci_method: str = "percentile") -> dict:
    """Compare every evaluation of model ``baseline`` with the others of its tasks (module doc);
    upsert the rows into ``comparisons``. Returns ``{"rows": [...], "markdown": str}``.

    Two evaluations of the baseline model itself are compared once (the eval_id first by name
    order is the baseline side). Pairs with no common repeat still get a row (n_pairs 0, no
    statistics), so a seed mismatch is visible rather than silently absent.

    Raises:
        NotFound: no evaluation of ``baseline`` (within ``metrics`` / ``eval_ids``) has repeat values.
    """
    if ci_method not in ("percentile", "BCa"):
        raise ValueError(f"ci_method must be percentile or BCa, not {ci_method!r}")
    tasks = _load(research, metrics, eval_ids)
    if not any(ev["model"] == baseline for evals in tasks.values() for ev in evals.values()):
        raise NotFound(f"no evaluation of model {baseline!r} has repeat values (evaluation_repeats)"
                       + (" among the chosen metrics / eval_ids" if metrics or eval_ids else ""))
    rows = []
    for task, evals in tasks.items():
        for base_id, base in evals.items():
            if base["model"] != baseline:
                continue
            for other_id, other in evals.items():
                if other_id == base_id or (other["model"] == baseline and other_id < base_id):
                    continue
                rows.append(_compare_one(task, base_id, base, other_id, other, n_boot=n_boot, seed=seed,
                                         ci_method=ci_method))
    now, version = dt.datetime.now(dt.timezone.utc), code_version()
    rows = [{**r, "created_at": now, "code_version": version} for r in rows]
    if rows:
        with derived_lock(research):
            upsert(research, COMPARISONS, rows)
            build_research_db(research)
    return {"rows": rows, "markdown": markdown(rows, baseline)}


def run_compare(params: CompareParams, *, progress: Callable[[str], None] | None = None) -> dict:
    """The ``compare`` pipeline: :func:`compare` on OUT/research; ``{"n_comparisons", "comparisons",
    "markdown"}`` (rows without their timestamp, JSON-ready)."""
    research = settings.research_dir(params.out)
    res = compare(research, params.baseline, metrics=params.metrics, eval_ids=params.eval_ids,
                  n_boot=params.n_boot, seed=params.seed, ci_method=params.ci_method)
    rows = [{k: v for k, v in r.items() if k != "created_at"} for r in res["rows"]]
    if progress:
        progress(f"compare {params.baseline}: {len(rows)} comparisons written to the comparisons table")
    return {"n_comparisons": len(rows), "comparisons": rows, "markdown": res["markdown"]}
