"""Few-shot segmentation (MRI-CORE protocol) on a synthetic labelled set of bright discs."""
from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from mrifoundry.models.adapters import build_sam_for_fewshot
from mrifoundry.models.sam_encoder import SAM_CONFIGS, build_sam_encoder
from mrifoundry.tasks.evaluation.fewshot import (METRICS, FewShotConfig, fewshot_lr, pick_fewshot, random_crop_rotate, run_fewshot,
                           train_fewshot)

SPLITS = ["train"] * 4 + ["val"] * 2 + ["test"] * 2


def make_discs(root: Path, n_patients: int = 8, n_slices: int = 6, size: int = 64, seed: int = 0) -> list[dict]:
    """``load_labelled``-like rows: per patient a stack of slices with a bright disc (the label)
    whose radius swells and shrinks over the stack (first and last slice empty), plus a dimmer
    unlabelled square so that "brighter than background" is not the answer."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    rows = []
    for p in range(n_patients):
        pid, (cy, cx) = f"p{p:02d}", rng.uniform(22, 42, 2)
        for z in range(n_slices):
            r = 0.0 if z in (0, n_slices - 1) else 9 + 5 * np.sin(np.pi * z / (n_slices - 1)) + rng.uniform(-1, 1)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
            img = 0.25 + 0.1 * rng.standard_normal((size, size))
            img[(abs(yy - (size - cy)) < 5) & (abs(xx - (size - cx)) < 5)] += 0.25
            img[disc] = 0.85 + 0.05 * rng.standard_normal(int(disc.sum()))
            fi, fm = root / f"{pid}_{z}.png", root / f"{pid}_{z}_mask.png"
            Image.fromarray((np.clip(img, 0, 1) * 255).astype(np.uint8)).save(fi)
            Image.fromarray(disc.astype(np.uint8) * 2).save(fm)  # label value 2: any non-zero is foreground
            rows.append({"slice_id": f"{pid}_z{z:04d}", "patient_id": pid, "split": SPLITS[p], "slice_index": z,
                         "image_file": str(fi), "mask_file": str(fm), "has_foreground": bool(disc.any())})
    return rows


@pytest.fixture(scope="module")
def rows(tmp_path_factory) -> list[dict]:
    return make_discs(tmp_path_factory.mktemp("discs"))


def tiny_sam_factory(cfg: FewShotConfig):
    return lambda: build_sam_for_fewshot(build_sam_encoder(SAM_CONFIGS["sam_tiny"]), cfg.image_size,
                                         encoder_adapter_depths=cfg.encoder_adapter_depths)


class PoolConv(nn.Module):
    """A 2-parameter "segmenter" for protocol tests: 64 px → 16 px logits."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)

    def forward(self, x):
        return self.conv(nn.functional.avg_pool2d(x, 4) * 4 - 2)


def test_pick_fewshot_disjoint_seeded(rows):
    s = pick_fewshot(rows, 3, 2, seed=0)
    tr = {r["patient_id"] for r in s["train"]}
    va = {r["patient_id"] for r in s["val"]}
    te = {r["patient_id"] for r in s["test_all"]}
    assert tr == {"p00", "p01", "p02"} and len(s["train"]) == 3  # first k patients, one slice each
    assert va == {"p04", "p05"} and te == {"p06", "p07"}
    assert not (tr & va or tr & te or va & te)
    assert all(r["has_foreground"] for k in ("train", "val", "test") for r in s[k])
    assert len(s["val"]) == 8 and len(s["test"]) == 8 and len(s["test_all"]) == 12
    assert [r["slice_index"] for r in s["test_all"][:6]] == list(range(6))
    # seeded: same seed same slices; the slice draw changes with the seed
    assert pick_fewshot(rows, 3, 2, seed=0) == s
    draws = {tuple(r["slice_id"] for r in pick_fewshot(rows, 3, 2, seed=k)["train"]) for k in range(6)}
    assert len(draws) > 1
    rnd = pick_fewshot(rows, 2, 1, seed=3, random_patients=True)
    assert rnd == pick_fewshot(rows, 2, 1, seed=3, random_patients=True)
    assert {r["patient_id"] for r in rnd["train"]} <= {"p00", "p01", "p02", "p03"}
    with pytest.raises(ValueError, match="need k=5"):
        pick_fewshot(rows, 5, 2, seed=0)
    bad = rows + [{**rows[0], "split": "test", "slice_index": 99}]
    with pytest.raises(ValueError, match="in splits"):
        pick_fewshot(bad, 3, 2, seed=0)


def test_lr_schedule_closed_form():
    lr, W, T, p = 1e-4, 200, 9000, 0.9
    assert fewshot_lr(0, T, lr, W, p) == pytest.approx(lr / W)
    assert fewshot_lr(99, T, lr, W, p) == pytest.approx(lr * 100 / W)
    assert fewshot_lr(W - 1, T, lr, W, p) == pytest.approx(lr)
    assert fewshot_lr(W, T, lr, W, p) == pytest.approx(lr)
    for t in (1000, 5000, 8999):
        assert fewshot_lr(t, T, lr, W, p) == pytest.approx(lr * (1 - (t - W) / T) ** 0.9)
    assert fewshot_lr(T + W + 10, T, lr, W, p) == 0.0
    lrs = [fewshot_lr(t, T, lr, W, p) for t in range(T)]
    assert np.argmax(lrs) in (W - 1, W) and all(np.diff(lrs[W:]) <= 0)


def test_crop_rotate_is_joint_and_seeded():
    x = torch.zeros(4, 1, 64, 64)
    x[:, :, 10:40, 20:50] = 1.0
    img, m = random_crop_rotate(x, x.clone(), 64, torch.Generator().manual_seed(0))
    assert img.shape == (4, 1, 64, 64) and m.shape == (4, 1, 64, 64)
    agree = ((img > 0.5) == (m > 0.5)).float().mean()
    assert agree > 0.98 and not torch.equal(m, x)
    img2, m2 = random_crop_rotate(x, x.clone(), 16, torch.Generator().manual_seed(0))
    assert torch.equal(img2, img) and m2.shape == (4, 1, 16, 16)
    assert set(m2.unique().tolist()) <= {0.0, 1.0}


def test_early_stopping_stops(rows):
    # lr 0: the validation score never improves after the first check
    cfg = FewShotConfig.tiny(lr=0.0, epochs=100, val_every=2, patience=4, min_epochs=0)
    r = train_fewshot(PoolConv, rows, cfg)
    assert r["stopped_early"] and r["best_epoch"] == 2 and r["epochs_run"] == 6
    assert len(r["curves"]["train_loss"]) == 6 and [e for e, _ in r["curves"]["val_dsc_3d"]] == [2, 4, 6]
    assert r["iterations"] == 6 * 2 == len(r["curves"]["lr"])
    r = train_fewshot(PoolConv, rows, replace(cfg, min_epochs=9))
    assert r["stopped_early"] and r["epochs_run"] == 10
    r = train_fewshot(PoolConv, rows, replace(cfg, epochs=5, patience=100))
    assert not r["stopped_early"] and r["epochs_run"] == 5 and [e for e, _ in r["curves"]["val_dsc_3d"]] == [2, 4, 5]


def test_run_fewshot_summary(rows):
    cfg = FewShotConfig.tiny(epochs=4, val_every=2)
    out = run_fewshot(PoolConv, rows, cfg)
    assert len(out["repeats"]) == 2 and [r["seed"] for r in out["repeats"]] == [0, 1]
    for m in METRICS:
        s = out["summary"][m]
        assert s["mean"] == pytest.approx(np.mean(s["values"]))
        assert s["std"] == pytest.approx(np.std(s["values"], ddof=1))   # the sample sd, as the catalog stores it
    first = out["repeats"][0]
    assert first["n_test_slices"] == 8 and first["n_test_slices_all"] == 12
    assert set(first["metrics"]["test_dsc_3d_per_patient"]) == {"p06", "p07"}
    # same seed, same result
    again = train_fewshot(PoolConv, rows, cfg, repeat=0)
    assert again["metrics"]["test_dsc_3d"] == first["metrics"]["test_dsc_3d"]


def test_tiny_sam_with_adapters_learns(rows):
    cfg = FewShotConfig.tiny()
    untrained = train_fewshot(tiny_sam_factory(cfg), rows, replace(cfg, epochs=0))
    trained = train_fewshot(tiny_sam_factory(cfg), rows, cfg)
    u, t = untrained["metrics"], trained["metrics"]
    assert untrained["iterations"] == 0 and math.isnan(u["best_val_dsc_3d"])
    assert trained["trainable_params"] == 10720  # adapters only
    assert t["test_dsc_3d"] > u["test_dsc_3d"] + 0.3 and t["test_dsc_3d"] > 0.45
    assert t["test_dsc_2d"] > u["test_dsc_2d"] + 0.3
    assert t["test_nsd_3d"] > u["test_nsd_3d"]
    assert t["best_val_dsc_3d"] == max(v for _, v in trained["curves"]["val_dsc_3d"])
