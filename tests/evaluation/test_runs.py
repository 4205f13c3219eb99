"""The plain evaluation runners without Prefect, and the one model resolution they share:
linear probing and zero-shot segmentation on a small curated catalog write their rows into
``evaluations``; a zoo entry, a pretrain run of the catalog and an unknown run id resolve as they should."""
from __future__ import annotations

import json

import pytest

from mrifoundry.catalog.views import connect
from mrifoundry.params import ModelChoice, ProbeParams, ZeroShotParams


@pytest.fixture(scope="module")
def research(small_catalog, tmp_path_factory):
    from mrifoundry.sample.labelled import make_mni_wm_dataset
    from mrifoundry.tasks.ingest.labelled2d import ingest_nifti_pairs
    root = make_mni_wm_dataset(tmp_path_factory.mktemp("mni-wm-runs"), n_cases=4, seed=0)
    ingest_nifti_pairs(small_catalog, root, "mni-wm", split=(0.5, 0.0, 0.5), seed=0)
    return small_catalog


def _rows(research, eval_id: str) -> list[tuple]:
    con = connect(research)
    try:
        return con.execute("SELECT metric, value, kind, model, weights_sha256, n, details FROM evaluations "
                           "WHERE eval_id = ? ORDER BY metric", [eval_id]).fetchall()
    finally:
        con.close()


def test_run_linear_probe_records_accuracy_rows(research):
    from mrifoundry.tasks.evaluation.runs import run_linear_probe
    lines = []
    res = run_linear_probe(ProbeParams(out=str(research.parent), model="random", arch="vit_tiny", image_size=64,
                                       query="SELECT png_file, patient_id, orientation AS label FROM training_slices",
                                       eval_id="probe-runner", epochs=10), progress=lines.append)
    rows = _rows(research, "probe-runner")
    assert [r[0] for r in rows] == ["accuracy", "balanced_accuracy"]
    assert {r[2:6] for r in rows} == {("linear-probe", "random", "random", res["n_test"])}
    assert dict((r[0], r[1]) for r in rows)["accuracy"] == pytest.approx(res["accuracy"])
    assert json.loads(rows[0][6])["epochs"] == 10
    assert res["markdown"].startswith("# Linear probe `probe-runner`") and lines and "accuracy" in lines[0]
    assert open(res["confusion_png"], "rb").read(4) == b"\x89PNG"


def test_run_zero_shot_names_the_evaluation_and_records_dice_per_k(research):
    from mrifoundry.tasks.evaluation.runs import run_zero_shot
    res = run_zero_shot(ZeroShotParams(dataset_id="mni-wm", out=str(research.parent), k_values=[2, 3],
                                       model="random", arch="vit_tiny", image_size=64))
    rows = _rows(research, "zeroshot-random-mni-wm")   # the default eval_id
    assert [r[0] for r in rows] == ["dice_k2", "dice_k3"] and set(res["dice_per_k"]) == {"2", "3"}
    assert all(r[2] == "zero-shot" and r[5] == res["n_slices"] for r in rows)
    assert [r[1] for r in rows] == pytest.approx([res["dice_per_k"]["2"], res["dice_per_k"]["3"]])
    assert "| k | DSC |" in res["markdown"]


def test_model_resolution_zoo_entry_pretrain_run_and_unknown_id(research, tmp_path):
    """A zoo entry without weights is a seeded random init; ``pretrained`` loads the run's
    checkpoint through the mri-core entry under the run's id; an unknown id is a LookupError."""
    import torch

    from mrifoundry.models.vit import VIT_CONFIGS, DinoVisionTransformer
    from mrifoundry.models.zoo import save_mri_core_checkpoint
    from mrifoundry.tasks.evaluation.embedding import weights_digest
    from mrifoundry.tasks.evaluation.model_choice import load_model, resolve_choice, volume_encoder_factory
    from mrifoundry.tasks.pretraining.report import register_model

    a = load_model(research, ModelChoice(model="random", arch="vit_tiny"), image_size=32, seed=1, device="cpu")
    b = load_model(research, ModelChoice(model="random", arch="vit_tiny"), image_size=32, seed=1, device="cpu")
    assert (a.label, a.weights_sha, a.weights) == ("random", "random", None)
    assert all(torch.equal(x, y) for x, y in zip(a.model.encoder.state_dict().values(),
                                                 b.model.encoder.state_dict().values()))

    torch.manual_seed(0)
    vit = DinoVisionTransformer(VIT_CONFIGS["vit_tiny"])
    ckpt = save_mri_core_checkpoint(vit.state_dict(), {}, research / "models" / "tiny-run" / "teacher.pth")
    register_model(research, {"model_id": "tiny-run", "recipe": "mri-core-tiny", "objective": "dinov2",
                              "arch": "vit_tiny", "init": "random", "query": "SELECT 1", "n_slices": 1,
                              "iterations": 1, "checkpoint_path": str(ckpt.relative_to(research))})
    r = resolve_choice(research, ModelChoice(model="sam-vit-b", pretrained="tiny-run"))
    assert (r.entry, r.arch, r.label, r.weights_sha) == ("mri-core", "vit_tiny", "tiny-run", weights_digest(ckpt))
    loaded = load_model(research, ModelChoice(pretrained="tiny-run"), device="cpu")
    assert loaded.model.name == "mri-core" and loaded.label == "tiny-run"
    got = loaded.model.encoder.state_dict()
    assert all(torch.equal(got[k], v) for k, v in vit.state_dict().items())

    vol = volume_encoder_factory(research, ModelChoice(model="brainsegfounder", arch="swin_tiny"), in_channels=2)
    assert (vol.label, vol.weights_sha) == ("brainsegfounder-random", "random") and callable(vol.model)
    with pytest.raises(ValueError, match="not a volume encoder"):
        volume_encoder_factory(research, ModelChoice(pretrained="tiny-run"), in_channels=1)
    with pytest.raises(LookupError, match="no pretrained model 'no-such-run'"):
        load_model(research, ModelChoice(pretrained="no-such-run"))
