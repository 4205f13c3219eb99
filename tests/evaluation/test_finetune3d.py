"""tasks/evaluation/finetune3d.py (+ its recording): a learnable blob task, metrics recomputed from
the saved predictions, sliding windows, label fractions by patient, normalisation, freezing, k-fold
over the fold column, the best-validation checkpoint (train3d's hook on a planted curve)."""
from __future__ import annotations

import copy
import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
import torch
from torch import nn

from mrifoundry.models.encoders3d import build_encoder3d
from mrifoundry.tasks.evaluation.finetune3d import (Finetune3dConfig, load_case, load_image, pick_train_patients, predict_volume,
                                        run_finetune3d)
from mrifoundry.tasks.evaluation.metrics import dice, hd95, lesion_f1, surface_dice

SHAPE = (40, 36, 24)        # X larger than the 32³ roi, Z smaller
LABEL = 3                   # not 1: the class index → label value mapping is exercised
ZOOMS = (1.0, 1.0, 2.0)


def write_blob_cases(folder, n: int = 6, n_test: int = 2, seed: int = 0) -> list[dict]:
    """A bright ball (label LABEL, radius 7 voxels) in noise per case, voxels of ZOOMS mm; one patient per case."""
    rng = np.random.default_rng(seed)
    grid = np.indices(SHAPE)
    rows = []
    for i in range(n):
        centre = rng.integers([10, 10, 8], [30, 26, 16])
        ball = np.sqrt(((grid - centre[:, None, None, None]) ** 2).sum(0)) < 7  # in voxels; NSD uses ZOOMS
        img = rng.normal(100, 30, SHAPE).astype(np.float32) + 150 * ball
        lab = (ball * LABEL).astype(np.uint8)
        affine = np.diag([*ZOOMS, 1.0])
        nib.save(nib.Nifti1Image(img, affine), folder / f"img{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), folder / f"lab{i}.nii.gz")
        rows.append({"case_id": f"case{i}", "patient_id": f"p{i}", "split": "test" if i >= n - n_test else "train",
                     "fold": i % 3, "image_file": str(folder / f"img{i}.nii.gz"),
                     "label_file": str(folder / f"lab{i}.nii.gz"), "class_label": None, "n_channels": 1,
                     "zooms": "x".join(f"{z:g}" for z in ZOOMS)})
    return rows


def unet_tiny():
    return build_encoder3d("unet_tiny")


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return write_blob_cases(tmp_path_factory.mktemp("blobs"))


@pytest.fixture(scope="module")
def runs(blobs, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred")
    # the UNETR decoder (widths 8-64) learns this in 30 steps at any seed tried (DSC 0.83-0.95 for seeds 0-4);
    # the SwinUNETR decoder on unet_tiny is 4 channels wide at full resolution and needs more steps on a CPU
    cfg = Finetune3dConfig.tiny(iterations=30, decoder="unetr")
    return {"trained": run_finetune3d(unet_tiny, blobs, cfg, out_dir=out / "trained"),
            "untrained": run_finetune3d(unet_tiny, blobs, replace(cfg, iterations=0), out_dir=out / "none")}


def test_a_learnable_blob_task_beats_the_untrained_network(runs):
    trained, untrained = runs["trained"]["metrics"], runs["untrained"]["metrics"]
    assert runs["trained"]["labels"] == [LABEL]
    assert trained["dice_3"] > 0.7, trained
    assert trained["dice_3"] > untrained["dice_3"] + 0.4
    assert trained["nsd_3"] > untrained["nsd_3"] + 0.3
    loss = runs["trained"]["curve"]["loss"]
    assert len(loss) == 30 and np.mean(loss[-5:]) < np.mean(loss[:5])


def test_per_label_metrics_equal_those_recomputed_from_the_saved_predictions(runs, blobs):
    res = runs["trained"]
    tests = [r for r in blobs if r["split"] == "test"]
    assert sorted(res["predictions"]) == [r["case_id"] for r in tests] == sorted(res["per_case"])
    d, n = [], []
    for r in tests:
        pred = np.asarray(nib.load(res["predictions"][r["case_id"]]).dataobj)
        target = np.asarray(nib.load(r["label_file"]).dataobj)
        assert pred.shape == SHAPE and set(np.unique(pred)) <= {0, LABEL}
        d.append(dice(pred == LABEL, target == LABEL))
        n.append(surface_dice(pred == LABEL, target == LABEL, tolerance=1.0, spacing=ZOOMS))
        assert res["per_case"][r["case_id"]]["dice_3"] == pytest.approx(d[-1])
        assert res["per_case"][r["case_id"]]["nsd_3"] == pytest.approx(n[-1])
        assert res["per_case"][r["case_id"]]["hd95_3"] == pytest.approx(hd95(pred == LABEL, target == LABEL, ZOOMS))
        assert res["per_case"][r["case_id"]]["lesion_f1_3"] == lesion_f1(pred == LABEL, target == LABEL)
    assert res["metrics"]["dice_3"] == pytest.approx(np.mean(d)) == pytest.approx(res["metrics"]["dice_mean"])
    assert res["std"]["dice_3"] == pytest.approx(np.std(d))
    assert res["metrics"]["nsd_3"] == pytest.approx(np.mean(n))


class _Threshold(nn.Module):
    """Logits (0.5 − x, x − 0.5): class 1 where the first channel exceeds 0.5, whatever the window."""

    def __init__(self):
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return torch.cat([0.5 - x[:, :1], x[:, :1] - 0.5], 1)


def test_sliding_window_prediction_covers_a_volume_larger_than_the_roi():
    rng = np.random.default_rng(1)
    image = rng.random((1, 70, 45, 20)).astype(np.float32)  # 70 > 2 rois, 20 < roi
    pred = predict_volume(_Threshold(), image, [5], Finetune3dConfig.tiny(overlap=0.25))
    assert pred.shape == (70, 45, 20) and pred.dtype == np.uint8
    np.testing.assert_array_equal(pred, np.where(image[0] > 0.5, 5, 0))


def test_label_fraction_picks_whole_patients_nested_and_seeded(blobs):
    rows = [{**r, "case_id": f"{r['case_id']}{s}"} for r in blobs for s in "ab"]  # two cases per patient
    train_patients = sorted({r["patient_id"] for r in rows if r["split"] == "train"})
    half = pick_train_patients(rows, 0.5, seed=7)
    assert len(half) == 2 and set(half) <= set(train_patients)
    assert half == pick_train_patients(rows, 0.5, seed=7)
    assert set(pick_train_patients(rows, 0.25, seed=7)) <= set(half) <= set(pick_train_patients(rows, 0.75, seed=7))
    assert pick_train_patients(rows, 1.0, seed=7) == train_patients
    assert len(pick_train_patients(rows, 0.01, seed=7)) == 1
    with pytest.raises(ValueError):
        pick_train_patients(rows, 0.0, seed=7)
    res = run_finetune3d(unet_tiny, rows, Finetune3dConfig.tiny(iterations=0, label_fraction=0.5, seed=7))
    assert res["train_patients"] == half and res["n_train_cases"] == 4  # both cases of each chosen patient


def test_images_are_scaled_per_channel_between_the_robust_percentiles(tmp_path):
    rng = np.random.default_rng(2)
    data = np.stack([rng.normal(0, 1, (12, 10, 8)), rng.normal(500, 200, (12, 10, 8))], -1).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "two.nii.gz")
    out, _, zooms = load_image(tmp_path / "two.nii.gz", n_channels=2)
    assert out.shape == (2, 12, 10, 8) and zooms == (1.0, 1.0, 1.0)
    for c in range(2):
        lo, hi = np.percentile(data[..., c], [0.5, 99.5])
        np.testing.assert_allclose(out[c], np.clip((data[..., c] - lo) / (hi - lo), 0, 1), atol=1e-5)
    with pytest.raises(ValueError, match="channels"):
        load_image(tmp_path / "two.nii.gz", n_channels=1)


def test_a_label_map_off_the_image_grid_is_refused(blobs, tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), tmp_path / "small.nii.gz")
    with pytest.raises(ValueError, match="not on the image grid"):
        load_case({**blobs[0], "label_file": str(tmp_path / "small.nii.gz")})


def test_the_lr_follows_warmup_then_cosine_and_progress_is_reported(blobs):
    from mrifoundry.tasks.evaluation.train3d import warmup_cosine
    lines = []
    cfg = Finetune3dConfig.tiny(iterations=4, warmup_iters=2, decoder="unetr")
    res = run_finetune3d(unet_tiny, blobs, cfg, progress=lines.append)
    assert res["curve"]["lr"] == pytest.approx([cfg.lr * f for f in (0.5, 1.0, 1.0, 0.5)])
    assert res["curve"]["lr"] == pytest.approx([cfg.lr * warmup_cosine(i, 4, 2) for i in range(4)])
    assert [ln.split(" loss")[0] for ln in lines] == [f"iteration {i}/4" for i in (1, 2, 3, 4)]


def test_a_frozen_encoder_is_not_changed_by_training(blobs):
    torch.manual_seed(0)
    encoder = build_encoder3d("unet_tiny")
    before = copy.deepcopy(encoder.state_dict())
    res = run_finetune3d(lambda: encoder, blobs, Finetune3dConfig.tiny(iterations=3, freeze=True))
    assert all(torch.equal(before[k], v) for k, v in encoder.state_dict().items())
    assert res["trainable_params"] > 0 and all(not p.requires_grad for p in encoder.parameters())
    thawed = run_finetune3d(lambda: copy.deepcopy(encoder), blobs, Finetune3dConfig.tiny(iterations=0))
    assert thawed["trainable_params"] == res["trainable_params"] + sum(p.numel() for p in encoder.parameters())


def _empty_research(tmp_path):
    from mrifoundry.catalog.schema import RESEARCH_TABLES
    from mrifoundry.catalog.store import table_file, write_parquet_atomic
    from mrifoundry.catalog.views import build_research_db
    research = tmp_path / "research"
    research.mkdir()
    for t in RESEARCH_TABLES:
        write_parquet_atomic(t.schema.empty_table(), table_file(research, t))
    build_research_db(research)
    return research


def test_finetune3d_eval_records_rows_and_an_overlay(blobs, tmp_path):
    from mrifoundry.catalog.views import query_dicts
    from mrifoundry.tasks.evaluation.volume_eval import finetune3d_eval
    research = _empty_research(tmp_path)
    res = finetune3d_eval(research, blobs, eval_id="ft3d-test", model_label="unet-tiny", weights_sha="random",
                          dataset_id="blobs", cfg=Finetune3dConfig.tiny(iterations=2), model_factory=unet_tiny,
                          fractions=[0.5, 1.0])
    _, got = query_dicts(research, "SELECT metric, kind, value, std, n, picture_path, details FROM evaluations "
                                   "WHERE eval_id = 'ft3d-test' ORDER BY metric")
    by = {r["metric"]: r for r in got}
    names = {f"{m}_{v}" for m in ("dice", "nsd", "hd95", "lesion_f1") for v in ("3", "mean")}
    assert set(by) == names | {f"{m}@f0.5" for m in names}
    assert {r["kind"] for r in got} == {"finetune-3d"} and {r["n"] for r in got} == {2}
    assert by["dice_3"]["value"] == pytest.approx(res["fractions"][1.0]["metrics"]["dice_3"])
    assert json.loads(by["dice_3@f0.5"]["details"])["train_patients"] == res["fractions"][0.5]["train_patients"]
    assert by["dice_mean"]["picture_path"] == "evaluations/ft3d-test/overlay.png"
    assert (research / by["dice_mean"]["picture_path"]).stat().st_size > 1000
    assert by["dice_mean@f0.5"]["picture_path"] is None


def test_kfold_eval_records_the_mean_and_sample_sd_over_folds_and_each_fold_as_a_repeat(blobs, tmp_path):
    from mrifoundry.catalog.views import query_dicts
    from mrifoundry.tasks.evaluation.volume_eval import finetune3d_eval
    research = _empty_research(tmp_path)
    res = finetune3d_eval(research, blobs, eval_id="ft3d-folds", model_label="unet-tiny", weights_sha="random",
                          dataset_id="blobs", cfg=Finetune3dConfig.tiny(iterations=1, folds=3, decoder="unetr"),
                          model_factory=unet_tiny)
    _, ev = query_dicts(research, "SELECT metric, value, std, n, details FROM evaluations WHERE eval_id = 'ft3d-folds'")
    _, reps = query_dicts(research, 'SELECT metric, "repeat", seed, value, n FROM evaluation_repeats '
                                    "WHERE eval_id = 'ft3d-folds' ORDER BY metric, \"repeat\"")
    by = {r["metric"]: r for r in ev}
    assert {"hd95_mean", "lesion_f1_3", "dice_mean"} <= set(by) and res["fractions"][1.0]["n_folds"] == 3
    folds = json.loads(by["dice_mean"]["details"])["folds"]
    for m in ("dice_mean", "hd95_3", "lesion_f1_mean"):
        vals = [f["metrics"][m] for f in folds]
        got = [r for r in reps if r["metric"] == m]
        assert [(r["repeat"], r["seed"], r["n"]) for r in got] == [(0, 0, 2), (1, 1, 2), (2, 2, 2)]
        assert [r["value"] for r in got] == pytest.approx(vals)
        assert by[m]["value"] == pytest.approx(np.mean(vals)) and by[m]["std"] == pytest.approx(np.std(vals, ddof=1))
    assert by["dice_mean"]["n"] == 6


def test_nested_regions_are_scored_as_label_at_least_v():
    """BraTS-style nested regions (1 = WT only, 2 = TC only, 3 = ET): region v is 'label ≥ v'."""
    from mrifoundry.tasks.evaluation.finetune3d import case_metrics
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, (12, 10, 8))
    pred = np.where(rng.random(target.shape) < 0.8, target, rng.integers(0, 4, target.shape))

    def dsc(a, b):
        return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())

    got = case_metrics(pred, target, [1, 2, 3], (1.0, 1.0, 1.0), 1.0, regions=True)
    flat = case_metrics(pred, target, [1, 2, 3], (1.0, 1.0, 1.0), 1.0)
    for v in (1, 2, 3):
        assert got[f"dice_{v}"] == pytest.approx(dsc(pred >= v, target >= v))
        assert flat[f"dice_{v}"] == pytest.approx(dsc(pred == v, target == v))
    assert got["dice_1"] > flat["dice_1"]   # the whole tumour is easier than its edema-only part


# ------------------------------------------------------------------ k-fold and the best-validation checkpoint

def test_kfold_tests_every_case_once_and_never_trains_or_validates_on_a_test_patient(blobs, tmp_path):
    """Folds 0, 1, 2 (case i in fold i % 3, patient p<i>); patient p0 has a second case in fold 1."""
    from collections import Counter
    rows = [*blobs, {**blobs[0], "case_id": "case0b", "fold": 1}]
    cfg = Finetune3dConfig.tiny(iterations=2, decoder="unetr", folds=3, val_every=1, val_fraction=0.3)
    res = run_finetune3d(unet_tiny, rows, cfg, out_dir=tmp_path)
    ids = [r["case_id"] for r in rows]
    assert Counter(c for f in res["folds"] for c in f["test_cases"]) == Counter(ids)   # each case once
    assert sorted(res["per_case"]) == sorted(ids) == sorted(res["predictions"]) and res["n_test_cases"] == 7
    by_case = {r["case_id"]: r for r in rows}
    for f in res["folds"]:
        test_patients = {by_case[c]["patient_id"] for c in f["test_cases"]}
        assert {by_case[c]["fold"] for c in f["test_cases"]} == {f["fold"]} and f["seed"] == f["fold"]
        train, val = set(f["train_patients"]), set(f["val_patients"])
        assert train and val and not (train & val) and not ((train | val) & test_patients)
        assert f["n_train_cases"] + f["n_val_cases"] + len(f["dropped_train_cases"]) + f["n_test_cases"] == 7
        iters = [i for i, _ in f["curve"]["val"]]
        scores = [s for _, s in f["curve"]["val"]]
        assert iters == [1, 2] and f["best_iteration"] == iters[int(np.argmax(scores))]
    assert res["folds"][0]["dropped_train_cases"] == ["case0b"]       # p0 is tested in fold 0
    assert res["folds"][1]["dropped_train_cases"] == ["case0"]        # … and in fold 1
    for m in ("dice_mean", "hd95_3", "lesion_f1_mean"):
        vals = [f["metrics"][m] for f in res["folds"]]
        assert res["fold_values"][m] == vals
        assert res["metrics"][m] == pytest.approx(np.mean(vals))
        assert res["std"][m] == pytest.approx(np.std(vals, ddof=1))
    with pytest.raises(ValueError, match="folds=5"):
        run_finetune3d(unet_tiny, rows, replace(cfg, folds=5))


def test_validation_comes_from_the_val_split_else_a_seeded_share_of_training_patients(blobs):
    cfg = Finetune3dConfig.tiny(iterations=2, val_every=2, decoder="unetr")
    held = run_finetune3d(unet_tiny, blobs, cfg)
    assert len(held["val_patients"]) == 1 and held["n_val_cases"] == 1 and held["n_train_cases"] == 3
    assert not set(held["val_patients"]) & set(held["train_patients"])
    assert held["curve"]["val"][0][0] == 2 and held["best_iteration"] == 2
    rows = [{**r, "split": "val"} if r["case_id"] == "case1" else r for r in blobs]
    split = run_finetune3d(unet_tiny, rows, replace(cfg, iterations=0))
    assert split["val_patients"] == ["p1"] and split["n_train_cases"] == 3
    assert run_finetune3d(unet_tiny, blobs, replace(cfg, val_every=0, iterations=0))["n_train_cases"] == 4


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 2)

    def forward(self, x):
        return self.lin(x)


def _tiny_loop(net: nn.Module, validate=None, val_every: int = 0, n: int = 6) -> dict:
    """train3d.train_loop on a linear layer and random batches (seeded by the loop's generator)."""
    from types import SimpleNamespace

    from mrifoundry.tasks.evaluation.train3d import train_loop
    cfg = SimpleNamespace(iterations=n, lr=0.1, encoder_lr=None, weight_decay=0.0, warmup_iters=0, seed=0, amp=False)

    def batch(rng):
        return torch.as_tensor(rng.normal(size=(8, 4)), dtype=torch.float32), torch.as_tensor(rng.integers(0, 2, 8))

    return train_loop(net, batch, nn.functional.cross_entropy, cfg, torch.device("cpu"), flip=False,
                      groups=[{"params": list(net.parameters()), "lr": cfg.lr}], validate=validate,
                      val_every=val_every)


def _fresh() -> nn.Module:
    torch.manual_seed(0)
    return _Tiny()


def test_the_best_validation_checkpoint_is_the_one_with_the_highest_planted_score():
    planted = {1: 0.2, 2: 0.7, 3: 0.5, 4: 0.7, 5: 0.1, 6: float("nan")}   # a tie (the first is kept) and a NaN
    net, snapshots = _fresh(), {}

    def validate(it):
        snapshots[it] = copy.deepcopy(net.state_dict())
        return planted[it]

    curve = _tiny_loop(net, validate, val_every=1)
    assert curve["best_iteration"] == 2 and curve["best_val"] == 0.7
    assert [i for i, _ in curve["val"]] == [1, 2, 3, 4, 5, 6]
    assert all(torch.equal(v, snapshots[2][k]) for k, v in net.state_dict().items())
    assert not all(torch.equal(v, snapshots[6][k]) for k, v in net.state_dict().items())   # not the last weights
    # validation leaves training alone: the same losses and last weights without the hook, and no extra keys
    plain_net = _fresh()
    plain = _tiny_loop(plain_net)
    assert curve["loss"] == plain["loss"] and set(plain) == {"loss", "lr"}
    assert all(torch.equal(v, snapshots[6][k]) for k, v in plain_net.state_dict().items())
    # every val_every steps and after the last
    sparse = _tiny_loop(_fresh(), lambda it: float(it), val_every=4)
    assert sparse["val"] == [[4, 4.0], [6, 6.0]] and sparse["best_iteration"] == 6
