"""The raw-pixel k-means baseline of zero-shot segmentation (MRI-CORE §2.4): pixel intensities
clustered jointly over the split, clusters named by majority vote, mean per-slice DSC; checked
against an exact 1-D k-means optimum and sklearn on every pixel, both with a NumPy vote and DSC."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from mrifoundry.tasks.evaluation.zero_shot import RawPixels, kmeans_segment, zero_shot_dice


def _np_dsc(pred: np.ndarray, target: np.ndarray) -> float:
    """Mean per-slice DSC, both empty = 1."""
    out = []
    for p, t in zip(pred, target):
        s = p.sum() + t.sum()
        out.append(1.0 if s == 0 else 2.0 * (p & t).sum() / s)
    return float(np.mean(out))


def _np_vote_dsc(labels: np.ndarray, masks: np.ndarray) -> float:
    fg = np.zeros(labels.shape, bool)
    for c in np.unique(labels):
        inside = labels == c
        if masks[inside].sum() > (~masks[inside]).sum():   # majority; ties -> background
            fg |= inside
    return _np_dsc(fg, masks)


def _optimal_1d(values: np.ndarray, k: int) -> np.ndarray:
    """Globally optimal 1-D k-means labels by exhaustive search over contiguous partitions of the
    sorted distinct values (optimal 1-D clusters are intervals)."""
    v, inv, cnt = np.unique(values, return_inverse=True, return_counts=True)
    best, best_cut = np.inf, None
    for cuts in itertools.combinations(range(1, len(v)), k - 1):
        edges = (0, *cuts, len(v))
        sse = 0.0
        for a, b in zip(edges[:-1], edges[1:]):
            mu = (v[a:b] * cnt[a:b]).sum() / cnt[a:b].sum()
            sse += (cnt[a:b] * (v[a:b] - mu) ** 2).sum()
        if sse < best:
            best, best_cut = sse, edges
    group = np.searchsorted(np.asarray(best_cut[1:-1]), np.arange(len(v)), side="right")
    return group[inv]


def _three_tissues(seed: int = 0, n: int = 4, size: int = 24):
    """Background ~0.1, tissue ~0.4, target ~0.9 (a few grey levels each); the label is the
    bright disc plus a strip of tissue, so intensity alone cannot reach DSC 1."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, masks = [], []
    for i in range(n):
        img = np.full((size, size), 0.1)
        tissue = (np.abs(yy - size / 2) < size / 3) & (np.abs(xx - size / 2) < size / 3)
        img[tissue] = 0.4
        disc = (yy - size / 2 - i % 2) ** 2 + (xx - size / 2) ** 2 < (size / 6 + i) ** 2
        img[disc] = 0.9
        img += rng.choice([-2, -1, 0, 1, 2], size=img.shape) / 255
        mask = disc | (tissue & (xx < size / 2 - size / 4))
        imgs.append(img)
        masks.append(mask)
    return torch.tensor(np.stack(imgs), dtype=torch.float32)[:, None], np.stack(masks)


def test_two_intensity_classes_reach_dsc_one_at_k2():
    yy, xx = np.mgrid[:20, :20]
    masks = np.stack([(yy - 10) ** 2 + (xx - 9 + i) ** 2 < 25 + 10 * i for i in range(3)])
    x = torch.tensor(np.where(masks, 0.8, 0.2), dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)  # RGB input
    feats = RawPixels(20).embed(x).numpy()
    assert feats.shape == (3, 1, 20, 20)
    assert zero_shot_dice(feats, masks, k_values=[2]) == {2: 1.0}


@pytest.mark.parametrize("k", [2, 3, 5])
def test_dsc_per_k_equals_exact_kmeans_and_sklearn_on_every_pixel(k):
    x, masks = _three_tissues()
    feats = RawPixels(x.shape[-1]).embed(x).numpy()
    ours = zero_shot_dice(feats, masks, k_values=[k], seed=0)[k]
    pixels = feats[:, 0].ravel()
    exact = _np_vote_dsc(_optimal_1d(pixels, k).reshape(masks.shape), masks)
    sk = KMeans(n_clusters=k, init="k-means++", n_init=1, random_state=0).fit_predict(pixels[:, None])
    assert ours == pytest.approx(exact, abs=1e-6)  # MONAI computes in float32
    assert ours == pytest.approx(_np_vote_dsc(sk.reshape(masks.shape), masks), abs=1e-6)  # MONAI computes in float32
    assert 0.5 < ours < 1.0   # the tissue strip is labelled but looks like unlabelled tissue


def test_k_beyond_distinct_values_gives_each_value_its_cluster():
    x = torch.tensor([[0.0, 0.5], [0.5, 1.0]])[None, None]
    lab = kmeans_segment(RawPixels(2).embed(x).numpy(), k=3)
    assert lab.shape == (1, 2, 2) and lab[0, 0, 1] == lab[0, 1, 0] and len(np.unique(lab)) == 3
    assert len(np.unique(kmeans_segment(RawPixels(2).embed(x).numpy(), k=4))) == 3


def test_runner_records_raw_pixel_rows(tmp_path):
    from mrifoundry.catalog.views import connect
    from mrifoundry.params import ZeroShotParams
    from mrifoundry.sample.labelled import make_mni_wm_dataset
    from mrifoundry.tasks.evaluation.runs import run_zero_shot
    from mrifoundry.tasks.ingest.labelled2d import ingest_nifti_pairs, load_labelled
    research = tmp_path / "out" / "research"
    research.mkdir(parents=True)
    ingest_nifti_pairs(research, make_mni_wm_dataset(tmp_path / "src", n_cases=2, seed=0), "wm",
                       split=(0.5, 0.0, 0.5), seed=0)
    res = run_zero_shot(ZeroShotParams(dataset_id="wm", out=str(tmp_path / "out"), model="raw-pixels",
                                       image_size=32, k_values=[2, 4]))
    con = connect(research)
    try:
        rows = con.execute("SELECT metric, value, model, weights_sha256, n FROM evaluations "
                           "WHERE eval_id = 'zeroshot-raw-pixels-wm' ORDER BY metric").fetchall()
    finally:
        con.close()
    n_fg = sum(r["has_foreground"] for r in load_labelled(research, "wm", "test"))
    assert [r[0] for r in rows] == ["dice_k2", "dice_k4"]
    assert {r[2:] for r in rows} == {("raw-pixels", "n/a", n_fg)}
    assert [r[1] for r in rows] == pytest.approx([res["dice_per_k"]["2"], res["dice_per_k"]["4"]])
    # two intensity clusters are both mostly non-WM (no foreground); four separate WM's intensities
    assert 0.0 <= rows[0][1] < rows[1][1] < 1.0, rows
