"""mrifoundry.tasks.evaluation.transfer against scipy.stats and an independent NumPy Pearson r."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import stats

from mrifoundry.tasks.evaluation.transfer import transfer_analysis

ROWS = [
    {"dataset": "knee", "gain": 0.12, "frd": 4.1},
    {"dataset": "brain", "gain": 0.02, "frd": 2.5},
    {"dataset": "prostate", "gain": 0.08, "frd": 5.0},
    {"dataset": "cardiac", "gain": 0.15, "frd": 6.3},
    {"dataset": "liver", "gain": 0.05, "frd": 3.9},
    {"dataset": "spine", "gain": 0.11, "frd": 5.6},
]


def test_correlations_match_scipy_and_numpy(tmp_path):
    png = tmp_path / "fig" / "transfer.png"
    res = transfer_analysis(ROWS, png)
    x = np.array([r["frd"] for r in ROWS])
    y = np.array([r["gain"] for r in ROWS])
    pr, sr = stats.pearsonr(x, y), stats.spearmanr(x, y)
    assert res["pearson"] == pytest.approx({"r": pr.statistic, "p": pr.pvalue}, rel=1e-12)
    assert res["spearman"] == pytest.approx({"r": sr.statistic, "p": sr.pvalue}, rel=1e-12)
    xc, yc = x - x.mean(), y - y.mean()
    assert res["pearson"]["r"] == pytest.approx((xc @ yc) / np.sqrt((xc @ xc) * (yc @ yc)), rel=1e-12)
    assert res["slope"] == pytest.approx((xc @ yc) / (xc @ xc), rel=1e-12)
    assert res["n"] == 6 and res["excluded"] == []
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] > 300


def test_non_finite_rows_are_excluded(tmp_path):
    rows = ROWS + [{"dataset": "self", "gain": 0.0, "frd": float("-inf")}]
    res = transfer_analysis(rows, tmp_path / "t.png")
    assert res["excluded"] == ["self"] and res["n"] == 6


def test_too_few_or_constant(tmp_path):
    with pytest.raises(ValueError, match="at least 3"):
        transfer_analysis(ROWS[:2], tmp_path / "t.png")
    with pytest.raises(ValueError, match="constant"):
        transfer_analysis([dict(r, gain=0.1) for r in ROWS], tmp_path / "t.png")
