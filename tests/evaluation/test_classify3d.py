"""tasks/evaluation/classify3d.py (+ its recording): AUROC against Mann–Whitney by hand, k-fold
without test patients in training, label fractions by patient, a learnable task."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from mrifoundry.models.encoders3d import build_encoder3d
from mrifoundry.tasks.evaluation.classify3d import (Classify3dConfig, auroc, balanced_accuracy, cross_validate, load_inputs,
                                         volume_input)


def mann_whitney_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting one half, over every pair."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_binary_auroc_is_the_mann_whitney_statistic():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40) + 0.3 * y, 1)  # rounded: ties
    probs = np.stack([1 - s, s], 1)
    assert auroc(y, probs, 2) == pytest.approx(mann_whitney_auc(s[y == 1], s[y == 0]))
    assert np.isnan(auroc(np.ones(5, int), probs[:5], 2))


def test_multiclass_auroc_is_the_macro_mean_of_one_vs_rest_mann_whitney():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 10)
    logits = rng.normal(size=(30, 3)) + np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    per_class = [mann_whitney_auc(probs[y == k, k], probs[y != k, k]) for k in range(3)]
    assert auroc(y, probs, 3) == pytest.approx(np.mean(per_class))
    # a class absent from a fold: the mean over the classes present
    keep = y != 2
    present = [mann_whitney_auc(probs[keep][y[keep] == k, k], probs[keep][y[keep] != k, k]) for k in (0, 1)]
    assert auroc(y[keep], probs[keep], 3) == pytest.approx(np.mean(present))


def test_balanced_accuracy_is_sklearns():
    y, pred = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 0, 1, 1, 0])
    assert balanced_accuracy(y, pred) == pytest.approx(balanced_accuracy_score(y, pred)) == pytest.approx(
        (2 / 3 + 1 + 0) / 3)


def write_cases(folder, n: int = 12, seed: int = 0) -> list[dict]:
    """Class 'pos': a bright cube in noise, 'neg': noise only; 3 folds; patient p0 has a second case
    (case11) in another fold than its first."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        cls = i % 2
        img = rng.normal(0, 1, (20, 16, 12)).astype(np.float32)
        img[5:15, 4:12, 3:9] += 4.0 * cls
        nib.save(nib.Nifti1Image(img, np.eye(4)), folder / f"img{i}.nii.gz")
        rows.append({"case_id": f"case{i}", "patient_id": "p0" if i == n - 1 else f"p{i}", "split": "train",
                     "fold": i % 3, "image_file": str(folder / f"img{i}.nii.gz"), "label_file": None,
                     "class_label": ["neg", "pos"][cls], "n_channels": 1, "zooms": "1x1x1"})
    assert rows[0]["fold"] != rows[-1]["fold"]
    return rows


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    return write_cases(tmp_path_factory.mktemp("cls"))


@pytest.fixture(scope="module")
def inputs(cases):
    return load_inputs(cases, 32)


def unet_tiny():
    return build_encoder3d("unet_tiny")


LINEAR = Classify3dConfig.tiny(mode="linear", iterations=60, lr=1e-2)


def test_volume_input_is_the_whole_field_of_view_at_roi(cases):
    x = volume_input(cases[1], 32)
    assert x.shape == (1, 32, 32, 32) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    centre, corner = x[0, 10:22, 10:22, 10:22].mean(), x[0, :4, :4, :4].mean()
    assert centre > corner + 0.3  # the cube stays in the middle of the resized volume


def test_kfold_tests_every_fold_once_and_never_trains_on_a_test_patient(cases, inputs):
    res = cross_validate(unet_tiny, cases, LINEAR, inputs)
    folds = res["folds"]
    assert [f["fold"] for f in folds] == [0, 1, 2]
    tested = [c for f in folds for c in f["test_cases"]]
    assert sorted(tested) == sorted(r["case_id"] for r in cases)  # each case tested exactly once
    fold_of = {r["case_id"]: r["fold"] for r in cases}
    patient = {r["case_id"]: r["patient_id"] for r in cases}
    for f in folds:
        assert all(fold_of[c] == f["fold"] for c in f["test_cases"])
        assert all(fold_of[c] != f["fold"] for c in f["train_cases"])
        assert not {patient[c] for c in f["train_cases"]} & {patient[c] for c in f["test_cases"]}
        assert len(f["train_cases"]) + len(f["dropped_train_cases"]) + len(f["test_cases"]) == len(cases)
    # p0's second case is dropped from the folds that test p0's first case, and vice versa
    assert folds[0]["dropped_train_cases"] == ["case11"] and folds[2]["dropped_train_cases"] == ["case0"]
    assert res["summary"]["auroc"]["values"] == [f["auroc"] for f in folds]
    assert res["summary"]["auroc"]["std"] == pytest.approx(np.std([f["auroc"] for f in folds], ddof=1))


def test_a_linear_probe_separates_bright_from_dark_volumes(cases, inputs):
    res = cross_validate(unet_tiny, cases, LINEAR, inputs)
    assert res["classes"] == ["neg", "pos"]
    assert res["summary"]["auroc"]["mean"] >= 0.9 and res["summary"]["accuracy"]["mean"] >= 0.75
    # the stored probabilities are those the metrics were computed from
    f = res["folds"][1]
    y = np.array([res["classes"].index(next(r["class_label"] for r in cases if r["case_id"] == c))
                  for c in f["test_cases"]])
    probs = np.array([f["probs"][c] for c in f["test_cases"]])
    assert f["auroc"] == pytest.approx(auroc(y, probs, 2))


def test_label_fraction_trains_on_whole_patients(cases, inputs):
    res = cross_validate(unet_tiny, cases, Classify3dConfig.tiny(mode="linear", iterations=5, label_fraction=0.5),
                         inputs)
    patient = {r["case_id"]: r["patient_id"] for r in cases}
    for f in res["folds"]:
        pool = [r for r in cases if r["fold"] != f["fold"] and r["case_id"] not in f["dropped_train_cases"]]
        n_patients = len({r["patient_id"] for r in pool})
        assert len(f["train_patients"]) == round(0.5 * n_patients)
        chosen = [r["case_id"] for r in pool if r["patient_id"] in f["train_patients"]]
        assert sorted(f["train_cases"]) == sorted(chosen)  # every case of a chosen patient, nothing else
        assert {patient[c] for c in f["train_cases"]} == set(f["train_patients"])


def test_finetuning_trains_the_encoder_too(cases, inputs):
    two = [{**r, "fold": r["fold"] % 2} for r in cases]
    lines = []
    res = cross_validate(unet_tiny, two, Classify3dConfig.tiny(iterations=2, batch_size=2), inputs,
                         progress=lines.append)
    n_encoder = sum(p.numel() for p in unet_tiny().parameters())
    assert [f["fold"] for f in res["folds"]] == [0, 1]
    assert [ln.split(" loss")[0] for ln in lines] == [f"fold {f}: iteration {i}/2" for f in (0, 1) for i in (1, 2)]
    assert all(f["trainable_params"] > n_encoder and len(f["curve"]) == 2 for f in res["folds"])
    linear = cross_validate(unet_tiny, two, Classify3dConfig.tiny(mode="linear", iterations=2), inputs)
    assert all(f["trainable_params"] == 2 * sum(unet_tiny().channels) + 2 for f in linear["folds"])  # linear head
    with pytest.raises(ValueError, match="mode"):
        cross_validate(unet_tiny, two, Classify3dConfig.tiny(mode="probe"), inputs)


def test_classify3d_eval_records_mean_and_std_over_folds(cases, tmp_path):
    from mrifoundry.catalog.schema import RESEARCH_TABLES
    from mrifoundry.catalog.store import table_file, write_parquet_atomic
    from mrifoundry.catalog.views import build_research_db, query_dicts
    from mrifoundry.tasks.evaluation.volume_eval import classify3d_eval
    research = tmp_path / "research"
    research.mkdir()
    for t in RESEARCH_TABLES:
        write_parquet_atomic(t.schema.empty_table(), table_file(research, t))
    build_research_db(research)
    torch.manual_seed(0)
    res = classify3d_eval(research, cases, eval_id="cls3d-test", model_label="unet-tiny", weights_sha="random",
                          dataset_id="cubes", cfg=LINEAR, model_factory=unet_tiny)
    _, got = query_dicts(research, "SELECT metric, kind, value, std, n, picture_path, details FROM evaluations "
                                   "WHERE eval_id = 'cls3d-test'")
    by = {r["metric"]: r for r in got}
    assert set(by) == {"auroc", "accuracy", "balanced_accuracy"} and {r["kind"] for r in got} == {"classify-3d"}
    s = res["fractions"][1.0]
    assert by["auroc"]["value"] == pytest.approx(s["auroc"]["mean"]) and by["auroc"]["std"] == pytest.approx(
        s["auroc"]["std"])
    assert by["auroc"]["n"] == len(cases)
    assert len(json.loads(by["auroc"]["details"])["values"]["auroc"]) == 3
    # each fold is a repeat of the catalog (repeat = fold, seed = seed + fold); the row's mean and sd come from them
    _, reps = query_dicts(research, "SELECT repeat, seed, value FROM evaluation_repeats WHERE eval_id = 'cls3d-test' "
                                    "AND metric = 'auroc' ORDER BY repeat")
    assert [(r["repeat"], r["seed"]) for r in reps] == [(0, LINEAR.seed), (1, LINEAR.seed + 1), (2, LINEAR.seed + 2)]
    vals = [r["value"] for r in reps]
    assert by["auroc"]["value"] == pytest.approx(np.mean(vals)) and by["auroc"]["std"] == pytest.approx(
        np.std(vals, ddof=1))
    assert (research / by["auroc"]["picture_path"]).stat().st_size > 1000
