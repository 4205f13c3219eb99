"""The evaluation-statistics tables: per-repeat values of an evaluation metric and the paired
comparisons computed from them (tasks/evaluation/evaluate.py::record, tasks/evaluation/compare.py).
Re-exported by catalog/schema.py, which lists them among the derived tables."""
from __future__ import annotations

from mrifoundry.catalog.table import F, I, S, TS, Column, Table

EVALUATION_REPEATS = Table(
    "evaluation_repeats", "research", ("eval_id", "metric", "repeat"),
    "One row per repeat of an evaluation metric (few-shot repeats, linear-probe splits, zero-shot k-means seeds): "
    "the values the evaluations row's mean and std are computed from, and what compare pairs by repeat.",
    (
        Column("eval_id", S, "evaluation run (evaluations.eval_id)"),
        Column("metric", S, "metric (evaluations.metric)"),
        Column("repeat", I, "repeat index 0..R-1; two evaluations with the same seeds are paired by it"),
        Column("seed", I, "seed of the repeat (the evaluation's seed + repeat): few-shot patients and init, "
                          "linear-probe 60:40 split and init, zero-shot k-means"),
        Column("value", F, "metric value of the repeat (NaN when undefined, e.g. no validation set; left out of "
                           "the mean and std)"),
        Column("n", I, "items the repeat's value is computed over (test slices or volumes); null when not recorded"),
    ),
)

COMPARISONS = Table(
    "comparisons", "research", ("baseline_eval_id", "eval_id", "metric"),
    "One row per (baseline evaluation, other evaluation, metric) of the same dataset and kind, paired by repeat "
    "(mrifoundry compare; tasks/evaluation/compare.py): means, the paired Wilcoxon signed-rank test and a "
    "bootstrap CI of the mean difference.",
    (
        Column("dataset", S, "evaluations.dataset of both evaluations"),
        Column("kind", S, "evaluations.kind of both evaluations"),
        Column("metric", S, "metric compared"),
        Column("baseline_model", S, "model of the baseline evaluation"),
        Column("baseline_eval_id", S, "baseline evaluation (evaluations.eval_id)"),
        Column("model", S, "model of the other evaluation"),
        Column("eval_id", S, "other evaluation (evaluations.eval_id)"),
        Column("n_pairs", I, "repeats paired (same repeat index and seed, both values finite)"),
        Column("seeds", S, "JSON list of the paired repeats' seeds"),
        Column("baseline_mean", F, "mean of the baseline's paired values"),
        Column("baseline_sd", F, "sample standard deviation (ddof 1) of the baseline's paired values; null for n_pairs < 2"),
        Column("mean", F, "mean of the other evaluation's paired values"),
        Column("sd", F, "sample standard deviation (ddof 1) of its paired values; null for n_pairs < 2"),
        Column("mean_diff", F, "mean of the paired differences, model − baseline"),
        Column("n_nonzero", I, "non-zero differences: what the test ranks (zero differences are dropped, "
                               "zero_method='wilcox')"),
        Column("statistic", F, "Wilcoxon signed-rank statistic (scipy: min(R+, R−), two-sided); null without a test"),
        Column("p_value", F, "two-sided p-value of scipy.stats.wilcoxon(model, baseline); 1.0 when every "
                             "difference is 0; null for n_pairs = 0"),
        Column("test_method", S, "exact (no ties or zeros, n ≤ 50), permutation (ties or zeros, n ≤ 13: every "
                                 "sign flip, so exact too), asymptotic (otherwise), or none: all differences zero"),
        Column("ci_low", F, "lower end of the 95 % bootstrap CI of mean_diff; null for n_pairs < 2"),
        Column("ci_high", F, "upper end of the 95 % bootstrap CI of mean_diff; null for n_pairs < 2"),
        Column("ci_method", S, "scipy.stats.bootstrap, paired: percentile or BCa, resamples and seed; "
                               "constant differences give the point interval [d, d] without resampling"),
        Column("created_at", TS, "when the comparison was computed"),
        Column("code_version", S, "mrifoundry version and git commit"),
    ),
)
