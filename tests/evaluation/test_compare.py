"""Statistics in the catalog: per-repeat rows (evaluation_repeats), the evaluations summary
computed from them, and the paired comparison (tasks/evaluation/compare.py) — every number
checked against NumPy / SciPy computed here from the rows read back with SQL."""
from __future__ import annotations

import itertools
import json
import math
import warnings

import numpy as np
import pytest
from scipy import stats

from mrifoundry.catalog.views import connect
from mrifoundry.errors import NotFound


@pytest.fixture
def research(tmp_path):
    from mrifoundry.catalog.schema import RESEARCH_TABLES
    from mrifoundry.catalog.store import table_file, write_parquet_atomic
    from mrifoundry.catalog.views import build_research_db
    root = tmp_path / "research"
    for t in RESEARCH_TABLES:
        write_parquet_atomic(t.schema.empty_table(), table_file(root, t))
    build_research_db(root)
    return root


def _sql(research, sql: str, args=()) -> list[tuple]:
    con = connect(research)
    try:
        return con.execute(sql, list(args)).fetchall()
    finally:
        con.close()


def _record(research, eval_id: str, model: str, values, seeds=None, metric: str = "dice", dataset: str = "ds",
            kind: str = "few-shot"):
    from mrifoundry.tasks.evaluation.evaluate import record
    row = {"eval_id": eval_id, "kind": kind, "model": model, "weights_sha256": "random", "dataset": dataset,
           "metric": metric, "n": len(values)}
    return record(research, [row], repeats={metric: list(values)}, seeds=seeds)


def _paired(research, base_id: str, other_id: str, metric: str = "dice"):
    """The two evaluations' values at equal repeat and seed, both finite — SQL, not the module's code."""
    rows = _sql(research, "SELECT o.value, b.value FROM evaluation_repeats o JOIN evaluation_repeats b "
                          "ON o.repeat = b.repeat AND o.seed = b.seed AND o.metric = b.metric "
                          "WHERE o.eval_id = ? AND b.eval_id = ? AND o.metric = ? AND isfinite(o.value) "
                          "AND isfinite(b.value) ORDER BY o.repeat", [other_id, base_id, metric])
    return np.array([r[0] for r in rows]), np.array([r[1] for r in rows])


def test_summary_rows_are_mean_and_sample_std_of_the_repeat_rows(research):
    vals = [0.71, 0.64, float("nan"), 0.80, 0.69]
    _record(research, "fs-a", "m", vals, seeds=[10, 11, 12, 13, 14])
    reps = _sql(research, "SELECT repeat, seed, value, n FROM evaluation_repeats WHERE eval_id = 'fs-a' ORDER BY repeat")
    assert [r[:2] for r in reps] == [(i, 10 + i) for i in range(5)] and math.isnan(reps[2][2])
    v = np.array([r[2] for r in reps])
    (value, std), = _sql(research, "SELECT value, std FROM evaluations WHERE eval_id = 'fs-a' AND metric = 'dice'")
    ok = v[np.isfinite(v)]   # NaN repeats are stored but left out, as documented
    assert value == pytest.approx(np.mean(ok), rel=1e-12) and std == pytest.approx(np.std(ok, ddof=1), rel=1e-12)
    # recomputable in SQL alone: DuckDB's stddev_samp is the ddof-1 std
    (m_sql, s_sql), = _sql(research, "SELECT avg(value), stddev_samp(value) FROM evaluation_repeats "
                                     "WHERE eval_id = 'fs-a' AND isfinite(value)")
    assert (m_sql, s_sql) == pytest.approx((value, std), rel=1e-12)
    # a rerun with fewer repeats leaves no stale repeat rows; one repeat has no std
    _record(research, "fs-a", "m", [0.5])
    assert _sql(research, "SELECT repeat, seed, value FROM evaluation_repeats WHERE eval_id = 'fs-a'") == [(0, 0, 0.5)]
    assert _sql(research, "SELECT value, std FROM evaluations WHERE eval_id = 'fs-a'") == [(0.5, None)]
    from mrifoundry.tasks.evaluation.evaluate import record
    with pytest.raises(ValueError, match="without a row"):
        record(research, [{"eval_id": "x", "metric": "a", "value": 1.0}], repeats={"b": [1.0]})


def _exact_p_by_enumeration(d: np.ndarray) -> float:
    """Two-sided exact Wilcoxon p by enumerating all 2^n sign patterns (no ties, no zeros)."""
    ranks = stats.rankdata(np.abs(d))
    t_obs = ranks[d > 0].sum()
    t_all = np.array([sum(r for r, s in zip(ranks, signs) if s) for signs in itertools.product((0, 1), repeat=len(d))])
    return min(1.0, 2 * min(np.mean(t_all <= t_obs), np.mean(t_all >= t_obs)))


def test_p_values_and_cis_equal_scipy_on_the_stored_repeats(research):
    from mrifoundry.tasks.evaluation.compare import compare
    rng = np.random.default_rng(0)
    base = rng.normal(0.70, 0.05, 8)
    _record(research, "fs-base", "base", base)
    _record(research, "fs-a", "model-a", base + rng.normal(0.03, 0.02, 8))          # distinct: exact
    tie = base.copy()
    tie[:4] += [0.02, -0.02, 0.0, 0.05]                                               # a tie and a zero
    _record(research, "fs-b", "model-b", tie)
    seeds = list(range(8))
    seeds[5] = 99                                                                     # repeat 5 is not paired
    _record(research, "fs-c", "model-c", base + 0.01 * rng.standard_normal(8), seeds=seeds)
    big = rng.normal(0.5, 0.1, 60)
    _record(research, "pr-base", "base", big, metric="accuracy", dataset="SELECT 1", kind="linear-probe")
    _record(research, "pr-a", "model-a", big + rng.normal(0.0, 0.05, 60), metric="accuracy", dataset="SELECT 1",
            kind="linear-probe")
    res = compare(research, "base", n_boot=2000, seed=3)
    assert len(res["rows"]) == 4
    got = {r[0]: r[1:] for r in _sql(research, "SELECT eval_id, n_pairs, p_value, statistic, test_method, ci_low, "
                                               "ci_high, ci_method, mean_diff, mean, sd, baseline_mean, baseline_sd, "
                                               "seeds FROM comparisons WHERE baseline_model = 'base'")}
    assert set(got) == {"fs-a", "fs-b", "fs-c", "pr-a"}
    want_method = {"fs-a": "exact", "fs-b": "permutation", "fs-c": "exact", "pr-a": "asymptotic"}
    for other, base_id in (("fs-a", "fs-base"), ("fs-b", "fs-base"), ("fs-c", "fs-base"), ("pr-a", "pr-base")):
        metric = "accuracy" if other == "pr-a" else "dice"
        x, b = _paired(research, base_id, other, metric)
        n, p, stat, method, lo, hi, ci_method, diff, mean, sd, bmean, bsd, seeds_json = got[other]
        w = stats.wilcoxon(x, b)                                   # scipy's defaults: two-sided, auto
        ci = stats.bootstrap((x, b), lambda u, v, axis=-1: np.mean(u - v, axis=axis), paired=True,
                             vectorized=True, n_resamples=2000, method="percentile",
                             rng=np.random.default_rng(3)).confidence_interval
        assert n == len(x) and method == want_method[other]
        assert p == pytest.approx(w.pvalue, rel=1e-12) and stat == pytest.approx(w.statistic)
        assert (lo, hi) == pytest.approx((ci.low, ci.high), rel=1e-12) and lo < diff < hi
        assert ci_method == "bootstrap percentile, paired, 2000 resamples, seed 3"
        assert diff == pytest.approx(np.mean(x - b)) and (mean, sd) == pytest.approx((x.mean(), x.std(ddof=1)))
        assert (bmean, bsd) == pytest.approx((b.mean(), b.std(ddof=1)))
        if other == "fs-a":
            assert p == pytest.approx(_exact_p_by_enumeration(x - b), rel=1e-12)
        if other == "fs-c":
            assert n == 7 and json.loads(seeds_json) == [0, 1, 2, 3, 4, 6, 7]
    assert "| model-a (fs-a) | 8 |" in res["markdown"]
    # BCa on request equals scipy's BCa
    r = compare(research, "base", eval_ids=["fs-base", "fs-a"], n_boot=2000, seed=3, ci_method="BCa")["rows"][0]
    x, b = _paired(research, "fs-base", "fs-a")
    ci = stats.bootstrap((x, b), lambda u, v, axis=-1: np.mean(u - v, axis=axis), paired=True, vectorized=True,
                         n_resamples=2000, method="BCa", rng=np.random.default_rng(3)).confidence_interval
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)


def test_a_model_compared_with_itself_gives_zero_differences(research):
    """Two evaluations of one model with the same seeds and values: no test (p = 1, what scipy
    also returns), the point CI [0, 0], compared once; an unknown baseline is NotFound."""
    from mrifoundry.tasks.evaluation.compare import compare
    vals = [0.61, 0.66, 0.58]
    _record(research, "zs-1", "raw", vals, kind="zero-shot")
    _record(research, "zs-2", "raw", vals, kind="zero-shot")
    rows = compare(research, "raw", n_boot=500)["rows"]
    assert [(r["baseline_eval_id"], r["eval_id"]) for r in rows] == [("zs-1", "zs-2")]
    (n, nz, diff, p, method, lo, hi, ci_method), = _sql(
        research, "SELECT n_pairs, n_nonzero, mean_diff, p_value, test_method, ci_low, ci_high, ci_method "
                  "FROM comparisons")
    assert (n, nz, diff, p, lo, hi) == (3, 0, 0.0, 1.0, 0.0, 0.0)
    assert method == "none: all differences zero (p = 1)" and ci_method == "point: constant differences"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # scipy warns (0/0 in its z) but returns p = 1 too
        assert stats.wilcoxon(*_paired(research, "zs-1", "zs-2")).pvalue == 1.0
    with pytest.raises(NotFound, match="no evaluation of model 'nobody'"):
        compare(research, "nobody")


@pytest.fixture(scope="module")
def catalog_with_wm(small_catalog, tmp_path_factory):
    from mrifoundry.sample.labelled import make_mni_wm_dataset
    from mrifoundry.tasks.ingest.labelled2d import ingest_nifti_pairs
    root = make_mni_wm_dataset(tmp_path_factory.mktemp("mni-wm-compare"), n_cases=4, seed=0)
    ingest_nifti_pairs(small_catalog, root, "mni-wm-cmp", split=(0.5, 0.0, 0.5), seed=0)
    return small_catalog


def test_probe_and_zero_shot_with_two_repeats_write_two_repeat_rows_per_metric(catalog_with_wm):
    from mrifoundry.params import ProbeParams, ZeroShotParams
    from mrifoundry.tasks.evaluation.runs import run_linear_probe, run_zero_shot
    research = catalog_with_wm
    common = dict(out=str(research.parent), model="random", arch="vit_tiny", image_size=64, repeats=2, seed=5)
    probe = run_linear_probe(ProbeParams(**common, eval_id="probe-rep2", epochs=5,
                                         query="SELECT png_file, patient_id, orientation AS label FROM training_slices"))
    zs = run_zero_shot(ZeroShotParams(**common, dataset_id="mni-wm-cmp", k_values=[2, 3], eval_id="zs-rep2"))
    for eval_id, metrics in (("probe-rep2", ["accuracy", "balanced_accuracy"]), ("zs-rep2", ["dice_k2", "dice_k3"])):
        reps = _sql(research, "SELECT metric, repeat, seed, value, n FROM evaluation_repeats WHERE eval_id = ? "
                              "ORDER BY metric, repeat", [eval_id])
        assert [r[:3] for r in reps] == [(m, r, 5 + r) for m in metrics for r in (0, 1)]
        for m in metrics:
            v = np.array([r[3] for r in reps if r[0] == m])
            (value, std), = _sql(research, "SELECT value, std FROM evaluations WHERE eval_id = ? AND metric = ?",
                                 [eval_id, m])
            assert value == pytest.approx(v.mean(), rel=1e-12) and std == pytest.approx(v.std(ddof=1), abs=1e-12)
    assert probe["accuracy"] == pytest.approx(np.mean([r[3] for r in _sql(
        research, "SELECT metric, repeat, seed, value FROM evaluation_repeats WHERE eval_id = 'probe-rep2' "
                  "AND metric = 'accuracy'")]))
    assert set(zs["dice_per_k"]) == {"2", "3"} and zs["repeats"] == 2
