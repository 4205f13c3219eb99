"""Per-repeat values of evaluation metrics (catalog table ``evaluation_repeats``) and the
``evaluations`` summary computed from them, written together.

A metric evaluated R times (few-shot repeats, linear-probe splits, zero-shot k-means seeds)
keeps one ``evaluation_repeats`` row per repeat; its ``evaluations`` row holds the mean and the
sample standard deviation (ddof 1) of the finite repeat values, so both can be recomputed from
the catalog (docs/evaluation.md, Statistics). Non-finite values (a NaN validation DSC when there
is no validation set) are stored but left out of mean and std, as tasks/evaluation/fewshot.py does.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mrifoundry.atomic import atomic_path
from mrifoundry.catalog.schema import EVALUATION_REPEATS, EVALUATIONS, Table, to_arrow
from mrifoundry.catalog.store import conform, table_file

__all__ = ["repeat_rows", "summarise", "write_with_repeats"]


def summarise(values: Sequence[float]) -> dict:
    """``{"value": mean, "std": sample std (ddof 1)}`` of the finite ``values``; the mean is NaN
    when none is finite, std None below two finite values (a single run has no spread)."""
    ok = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    return {"value": float(np.mean(ok)) if ok.size else float("nan"),
            "std": float(np.std(ok, ddof=1)) if ok.size > 1 else None}


def mean_sd(values: Sequence[float]) -> dict:
    """``{"mean", "std", "values"}`` as the evaluation summaries report them: :func:`summarise`'s
    mean and sample std (NaN below two finite values), and every repeat's value."""
    s = summarise(values)
    return {"mean": s["value"], "std": float("nan") if s["std"] is None else s["std"], "values": list(values)}


def repeat_rows(eval_id: str, metric: str, values: Sequence[float], seeds: Sequence[int] | None = None,
                n: Sequence[int | None] | None = None) -> list[dict]:
    """One ``evaluation_repeats`` row per value: repeat r with ``seeds[r]`` (default r) and ``n[r]`` items."""
    if seeds is not None and len(seeds) != len(values) or n is not None and len(n) != len(values):
        raise ValueError(f"{metric}: {len(values)} repeat values, but seeds or n of another length")
    return [{"eval_id": eval_id, "metric": metric, "repeat": r, "seed": int(seeds[r]) if seeds is not None else r,
             "value": float(v) if v is not None else float("nan"), "n": None if n is None or n[r] is None else int(n[r])}
            for r, v in enumerate(values)]


def _without(research, table: Table, keys: set[tuple[str, str]], rows: list[dict]) -> pa.Table:
    """``table`` without every row of the (eval_id, metric) ``keys``, plus ``rows``."""
    new = to_arrow(table, rows)
    path = table_file(research, table)
    if not path.exists():
        return new
    old = conform(pq.read_table(path), table)
    pairs = zip(old.column("eval_id").to_pylist(), old.column("metric").to_pylist())
    keep = [i for i, k in enumerate(pairs) if k not in keys]
    return pa.concat_tables([old.take(pa.array(keep, pa.int64())), new])


def write_with_repeats(research, rows: list[dict], repeats: list[dict]) -> None:
    """Replace the ``evaluations`` rows of every (eval_id, metric) in ``rows`` and ALL their
    ``evaluation_repeats`` rows (a rerun with fewer repeats, or none, leaves no stale repeat).

    Call under ``derived_lock``. Both tables are written in full to temp files before either is
    renamed (mrifoundry.atomic): an error while writing changes neither.
    """
    keys = {(r["eval_id"], r["metric"]) for r in rows}
    stray = {(r["eval_id"], r["metric"]) for r in repeats} - keys
    if stray:
        raise ValueError(f"repeat values without an evaluations row: {sorted(stray)}")
    ev = _without(research, EVALUATIONS, keys, rows)
    rep = _without(research, EVALUATION_REPEATS, keys, repeats)
    with atomic_path(table_file(research, EVALUATION_REPEATS)) as t_rep, \
            atomic_path(table_file(research, EVALUATIONS)) as t_ev:
        pq.write_table(rep, t_rep, compression="zstd")
        pq.write_table(ev, t_ev, compression="zstd")
