"""tasks/evaluation/finetune3d.py (+ its recording): a learnable blob task, metrics recomputed from
the saved predictions, sliding windows, label fractions by patient, normalisation, freezing."""
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
from mrifoundry.tasks.evaluation.metrics import dice, surface_dice

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


def test_finetune3d_eval_records_rows_and_an_overlay(blobs, tmp_path):
    from mrifoundry.catalog.schema import RESEARCH_TABLES
    from mrifoundry.catalog.store import table_file, write_parquet_atomic
    from mrifoundry.catalog.views import build_research_db, query_dicts
    from mrifoundry.tasks.evaluation.volume_eval import finetune3d_eval
    research = tmp_path / "research"
    research.mkdir()
    for t in RESEARCH_TABLES:
        write_parquet_atomic(t.schema.empty_table(), table_file(research, t))
    build_research_db(research)
    res = finetune3d_eval(research, blobs, eval_id="ft3d-test", model_label="unet-tiny", weights_sha="random",
                          dataset_id="blobs", cfg=Finetune3dConfig.tiny(iterations=2), model_factory=unet_tiny,
                          fractions=[0.5, 1.0])
    _, got = query_dicts(research, "SELECT metric, kind, value, std, n, picture_path, details FROM evaluations "
                                   "WHERE eval_id = 'ft3d-test' ORDER BY metric")
    by = {r["metric"]: r for r in got}
    assert set(by) == {"dice_3", "nsd_3", "dice_mean", "nsd_mean", "dice_3@f0.5", "nsd_3@f0.5", "dice_mean@f0.5",
                       "nsd_mean@f0.5"}
    assert {r["kind"] for r in got} == {"finetune-3d"} and {r["n"] for r in got} == {2}
    assert by["dice_3"]["value"] == pytest.approx(res["fractions"][1.0]["metrics"]["dice_3"])
    assert json.loads(by["dice_3@f0.5"]["details"])["train_patients"] == res["fractions"][0.5]["train_patients"]
    assert by["dice_mean"]["picture_path"] == "evaluations/ft3d-test/overlay.png"
    assert (research / by["dice_mean"]["picture_path"]).stat().st_size > 1000
    assert by["dice_mean@f0.5"]["picture_path"] is None


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
