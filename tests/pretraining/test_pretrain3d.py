"""The volume trainer on a curated catalog: every method, exact resume, stage 2, zoo reload."""
from __future__ import annotations

import json
import math

import pytest
import torch

from mrifoundry.models import zoo
from mrifoundry.tasks.pretraining.recipes import recipe
from mrifoundry.tasks.pretraining import launch
from mrifoundry.tasks.pretraining.volumes import train_volumes
from mrifoundry.tasks.data.volumes import DEFAULT_QUERY, PAIRED_QUERY, query_volumes

ZOO_ENTRY = {"triad": "triad-swin", "brainsegfounder": "brainsegfounder", "prism": "prism"}


@pytest.fixture(scope="module")
def volumes(volume_catalog):
    rows = query_volumes(volume_catalog, DEFAULT_QUERY)
    texts = torch.nn.functional.normalize(torch.randn(len(rows), 384, generator=torch.Generator().manual_seed(0)),
                                          dim=1).numpy()
    return rows, texts


@pytest.mark.parametrize("method", ["triad", "brainsegfounder", "prism"])
def test_each_method_trains_on_catalog_volumes_and_reloads_through_the_zoo(method, volumes, volume_catalog, tmp_path):
    rows, texts = volumes
    if method == "prism":
        rows = query_volumes(volume_catalog, PAIRED_QUERY)
    cfg = recipe(f"{method}-tiny", max_iterations=2)
    logged = []
    res = train_volumes(cfg, rows, tmp_path, texts=texts[:len(rows)] if method == "triad" else None,
                        on_log=logged.append)
    assert res.iterations == 2 and math.isfinite(res.final_loss)
    assert [r["iteration"] for r in logged] == [1, 2] and all(math.isfinite(r["loss"]) for r in logged)
    ckpt = torch.load(res.checkpoint, weights_only=False)
    assert ckpt["method"] == method and ckpt["iteration"] == 2
    if method == "prism":       # body-part classes come from the catalog rows
        assert ckpt["body_parts"] == sorted({r["body_part"].lower() for r in rows})
    m = zoo.load(ZOO_ENTRY[method], res.checkpoint)
    enc = m.encoder.state_dict()
    for k, v in ckpt["state_dict"].items():    # the published layout maps onto the zoo encoder
        key = k.split("swinViT.", 1)[1] if "swinViT." in k else k
        assert torch.equal(enc[f"swinViT.{key}"], v), k
    vol = torch.rand(2, 1, 40, 32, 36)              # padded to multiples of 32 inside
    assert m.pooled(vol).shape == (2, m.embed_dim) and m.embed(vol).shape[0] == 2
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


def test_resume_equals_an_uninterrupted_run(volumes, tmp_path):
    rows, texts = volumes
    full = train_volumes(recipe("triad-tiny", max_iterations=3, checkpoint_every=1), rows, tmp_path / "a", texts=texts)
    train_volumes(recipe("triad-tiny", max_iterations=2, checkpoint_every=1), rows, tmp_path / "b", texts=texts)
    resumed = train_volumes(recipe("triad-tiny", max_iterations=3, checkpoint_every=1), rows, tmp_path / "b",
                            texts=texts)
    assert resumed.iterations == full.iterations == 3
    a = torch.load(full.checkpoint, weights_only=False)["state_dict"]
    b = torch.load(resumed.checkpoint, weights_only=False)["state_dict"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3                          # the resumed run logged only its new step
    with pytest.raises(ValueError, match="cannot resume"):
        train_volumes(recipe("triad-tiny", max_iterations=4), rows[:-1], tmp_path / "b", texts=texts[:-1])


def test_stage_two_starts_from_stage_one(volumes, tmp_path):
    rows, _ = volumes
    s1 = train_volumes(recipe("brainsegfounder-tiny", max_iterations=1), rows, tmp_path / "s1")
    state = torch.load(tmp_path / "s1" / "train_state.pt", weights_only=False)["model"]
    cfg2 = recipe("brainsegfounder-tiny", max_iterations=1, lr=0.0, min_lr=0.0)
    s2 = train_volumes(cfg2, rows[:3], tmp_path / "s2", init_state=tmp_path / "s1" / "train_state.pt")
    after = torch.load(tmp_path / "s2" / "train_state.pt", weights_only=False)["model"]
    # lr 0: AdamW moves nothing, so stage 2's weights are exactly stage 1's
    assert all(torch.equal(state[k], after[k]) for k in state)
    assert s1.checkpoint != s2.checkpoint


def test_triad_needs_texts_and_prism_needs_pairs(volumes, tmp_path):
    rows, _ = volumes
    with pytest.raises(ValueError, match="description embeddings"):
        train_volumes(recipe("triad-tiny"), rows, tmp_path / "t")
    one_per_exam = [rows[0], next(r for r in rows if r["exam_id"] != rows[0]["exam_id"])]
    with pytest.raises(ValueError, match="PRISM pairs"):
        train_volumes(recipe("prism-tiny"), one_per_exam, tmp_path / "p")


def test_ddp_two_processes_gloo(volumes, tmp_path):
    """torchrun through the flow's launcher, 2 CPU processes (gloo): the job file it writes for
    nproc > 1, rank 0's records streamed back, its result.json."""
    import numpy as np
    rows, texts = volumes
    run = tmp_path / "ddp"
    run.mkdir()
    (run / "volumes.json").write_text(json.dumps(rows))
    np.save(run / "texts.npy", texts)
    records: list[dict] = []
    res = launch.train_volumes_run(run, recipe("triad-tiny", max_iterations=2, batch_size=2).to_dict(), True, 2,
                                   records.append)
    assert json.loads((run / "result.json").read_text()) == res and records[-1]["iteration"] == 2
    assert res["iterations"] == 2 and math.isfinite(res["final_loss"])
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(logged) == 2 and all(math.isfinite(x["recon"]) and x["recon"] > 0 for x in logged)
    assert torch.isfinite(zoo.load("triad-swin", res["checkpoint"]).pooled(torch.rand(1, 1, 32, 32, 32))).all()


def test_latest_checkpoint_is_the_highest_iteration_not_the_last_name(tmp_path):
    from mrifoundry.tasks.pretraining.launch import latest_checkpoint as _latest
    for it in (2, 10, 9):
        (tmp_path / "eval" / f"training_{it}").mkdir(parents=True)
        (tmp_path / "eval" / f"training_{it}" / "teacher_checkpoint.pth").touch()
        (tmp_path / "checkpoints").mkdir(exist_ok=True)
        (tmp_path / "checkpoints" / f"encoder_{it}.pth").touch()
    assert _latest(tmp_path, "eval/training_*/teacher_checkpoint.pth").parent.name == "training_10"
    assert _latest(tmp_path, "checkpoints/encoder_*.pth").name == "encoder_10.pth"
    assert _latest(tmp_path, "none_*.pth") is None
