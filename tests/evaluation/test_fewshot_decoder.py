"""Few-shot SAM as MRI-CORE runs it: the prompt encoder and mask decoder from a SAM checkpoint,
the three fine-tuning modes (adapter, LoRA, full), the refusal without a decoder, the paper's
protocol defaults, and the provenance each ``evaluations`` row records.

The checkpoint is segment-anything's own ``Sam`` built with our tiny encoder config (SAM's
layout: ``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*`` with 3 multimask
outputs = 4 mask tokens), every tensor redrawn at random so that "equal" can only mean
"loaded"."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from segment_anything.modeling import MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch.nn import functional as F

from mrifoundry.errors import NotFound, UsageError
from mrifoundry.models.adapters import build_sam_for_fewshot
from mrifoundry.models.lora import LoRAQV
from mrifoundry.models.sam_encoder import SAM_CONFIGS, build_sam_encoder
from mrifoundry.params import FewShotParams, ModelChoice

TINY = SAM_CONFIGS["sam_tiny"]
DIM, DEPTH, EMBED = TINY.out_chans, TINY.depth, TINY.embed_dim
# num_classes=1 → 2 mask tokens, the checkpoint has 4: MRI-CORE's load_from drops these (exact keys)
RANDOM_KEYS_1CLS = sorted(
    ["mask_decoder.mask_tokens.weight"]
    + [f"mask_decoder.output_hypernetworks_mlps.{i}.layers.{j}.{t}" for i in range(2) for j in range(3)
       for t in ("weight", "bias")]
    + [f"mask_decoder.iou_prediction_head.layers.{j}.{t}" for j in range(3) for t in ("weight", "bias")])
DECODER = ("prompt_encoder.", "mask_decoder.")


def write_sam_checkpoint(path, seed: int = 0, dim: int = DIM) -> dict:
    torch.manual_seed(seed)
    grid = TINY.img_size // TINY.patch_size
    sam = Sam(image_encoder=build_sam_encoder(TINY),
              prompt_encoder=PromptEncoder(embed_dim=dim, image_embedding_size=(grid, grid),
                                           input_image_size=(TINY.img_size, TINY.img_size), mask_in_chans=16),
              mask_decoder=MaskDecoder(num_multimask_outputs=3, transformer_dim=dim, iou_head_depth=3,
                                       iou_head_hidden_dim=dim,
                                       transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=8 * dim,
                                                                     num_heads=8)))
    sd = {k: torch.randn_like(v) for k, v in sam.state_dict().items()}
    torch.save(sd, path)
    return sd


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("sam") / "sam_tiny_01.pth"
    return path, write_sam_checkpoint(path)


@pytest.mark.parametrize("mode", ["adapter", "lora", "full"])
def test_decoder_loads_bit_for_bit_and_the_random_keys_are_exactly_the_tied_ones(ckpt, mode):
    path, sd = ckpt
    sam = build_sam_for_fewshot(build_sam_encoder(TINY), 64, num_classes=1, sam_checkpoint=path, mode=mode)
    got = sam.state_dict()
    assert sam.decoder_missing_keys == RANDOM_KEYS_1CLS
    tied = ("mask_decoder.mask_tokens.", "mask_decoder.output_hypernetworks_mlps.", "mask_decoder.iou_prediction_head.")
    loaded = [k for k in sd if k.startswith(DECODER) and not k.startswith(tied)]
    assert len(loaded) == 125 - len(RANDOM_KEYS_1CLS)  # 125 decoder tensors in the 2-token model
    assert all(torch.equal(got[k], sd[k]) for k in loaded)
    # every decoder tensor of the model is either loaded or listed; the listed ones are not the checkpoint's
    base = [k for k in got if k.startswith(DECODER) and "adapter" not in k and ".lora_" not in k]
    assert sorted(base) == sorted(loaded + RANDOM_KEYS_1CLS)
    for k in RANDOM_KEYS_1CLS:
        assert got[k].shape != sd[k].shape or not torch.equal(got[k], sd[k])
    # the encoder is the zoo's, never the checkpoint's
    assert not torch.equal(got["image_encoder.pos_embed"], sd["image_encoder.pos_embed"])


def test_three_classes_load_everything_and_a_wrong_width_is_refused(ckpt, tmp_path):
    path, sd = ckpt
    sam = build_sam_for_fewshot(build_sam_encoder(TINY), 64, num_classes=3, sam_checkpoint=path)
    assert sam.decoder_missing_keys == []
    assert torch.equal(sam.state_dict()["mask_decoder.mask_tokens.weight"], sd["mask_decoder.mask_tokens.weight"])
    wide = tmp_path / "wide.pth"
    write_sam_checkpoint(wide, dim=2 * DIM)
    with pytest.raises(ValueError, match="do not fit this encoder's width"):
        build_sam_for_fewshot(build_sam_encoder(TINY), 64, sam_checkpoint=wide)


def _trainable(sam) -> set[str]:
    return {n for n, p in sam.named_parameters() if p.requires_grad}


def test_lora_starts_at_the_base_model_trains_only_lora_and_the_decoder_and_leaves_k_alone(ckpt):
    path, _ = ckpt
    torch.manual_seed(0)
    encoder = build_sam_encoder(TINY)
    torch.manual_seed(5)
    base = build_sam_for_fewshot(encoder, 64, sam_checkpoint=path, mode="full").eval()
    torch.manual_seed(5)  # the same random mask tokens / hypernetworks as ``base``
    sam = build_sam_for_fewshot(encoder, 64, sam_checkpoint=path, mode="lora")
    qkvs = [b.attn.qkv for b in sam.image_encoder.blocks]
    assert sam.mode == "lora" and sam.lora_blocks == tuple(range(DEPTH)) and all(isinstance(q, LoRAQV) for q in qkvs)
    lora = {n for n in _trainable(sam) if ".lora_" in n}
    assert len(lora) == 4 * DEPTH and sum(p.numel() for n, p in sam.named_parameters() if n in lora) == \
        DEPTH * 2 * (EMBED * 4 + 4 * EMBED)
    # finetune-SAM: the image encoder frozen but for LoRA; prompt encoder and mask decoder train
    assert _trainable(sam) == lora | {n for n, _ in sam.named_parameters() if n.startswith(DECODER)}
    # step 0: B = 0 (A is not), so LoRA's output is the base model's, bit for bit
    assert all(q.lora_b_q.weight.abs().sum() == 0 and q.lora_a_q.weight.abs().sum() > 0 for q in qkvs)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(sam.eval()(x), base(x))

    frozen = {n: p.detach().clone() for n, p in sam.named_parameters() if n.startswith("image_encoder.")
              and ".lora_" not in n}
    before = {n: p.detach().clone() for n, p in sam.named_parameters() if n in lora or n.startswith("mask_decoder.")}
    sam.train()
    opt = torch.optim.AdamW([p for p in sam.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    target = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    for _ in range(3):
        loss = F.binary_cross_entropy_with_logits(sam(x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dict(sam.named_parameters())
    assert all(torch.equal(after[n], v) for n, v in frozen.items())   # base qkv and every other encoder weight
    assert all(not torch.equal(after[n], before[n]) for n in lora)     # every A and B moved
    up = "mask_decoder.output_upscaling.0.weight"
    assert not torch.equal(after[up], before[up])

    # k's third is the base projection's; q and v are base + B·A·x (an independent computation)
    blk = qkvs[0]
    h = torch.randn(3, 5, EMBED, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out, plain = blk(h), h @ blk.weight.T + blk.bias
        d = EMBED
        assert torch.equal(out[..., d:2 * d], F.linear(h, blk.weight, blk.bias)[..., d:2 * d])
        dq = h @ blk.lora_a_q.weight.T @ blk.lora_b_q.weight.T
        dv = h @ blk.lora_a_v.weight.T @ blk.lora_b_v.weight.T
        assert dq.abs().max() > 1e-4 and dv.abs().max() > 1e-4
        torch.testing.assert_close(out[..., :d], plain[..., :d] + dq, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(out[..., 2 * d:], plain[..., 2 * d:] + dv, rtol=1e-5, atol=1e-6)
    # the base keys survive LoRA: a SAM checkpoint of the base loads into the LoRA model unchanged
    assert {k for k in sam.state_dict() if ".lora_" not in k} == set(base.state_dict())


def test_no_decoder_checkpoint_is_refused_unless_random_decoder(tmp_path, monkeypatch, ckpt):
    from mrifoundry.tasks.evaluation.model_choice import fewshot_factory
    choice = ModelChoice(model="random", arch="sam_tiny")
    kw = {"image_size": 64, "encoder_adapter_depths": (0, 1)}
    with pytest.raises(UsageError, match=r"'random' needs SAM's prompt encoder and mask decoder: give "
                                         r"--sam-checkpoint PATH .*or --random-decoder"):
        fewshot_factory(tmp_path, choice, **kw)
    with pytest.raises(NotFound, match="not a file"):
        fewshot_factory(tmp_path, choice, sam_checkpoint=str(tmp_path / "none.pth"), **kw)
    loaded = fewshot_factory(tmp_path, choice, random_decoder=True, **kw)
    plain = build_sam_for_fewshot(build_sam_encoder(TINY), 64, mode="full")
    every = sorted(k for k in plain.state_dict() if k.startswith(DECODER))
    assert loaded.provenance["decoder_source"] == "random" and loaded.provenance["decoder_sha256"] == "random"
    assert loaded.provenance["decoder_random_keys"] == every and len(every) == 125
    assert loaded.provenance["mode"] == "adapter" and loaded.provenance["trainable_params"] == 10720
    # {home} expands to MRIFOUNDRY_HOME
    path, _ = ckpt
    monkeypatch.setenv("MRIFOUNDRY_HOME", str(path.parent))
    loaded = fewshot_factory(tmp_path, choice, sam_checkpoint="{home}/" + path.name, **kw)
    assert loaded.provenance["decoder_source"] == path.name
    assert loaded.provenance["decoder_random_keys"] == RANDOM_KEYS_1CLS


def test_paper_protocol_defaults_and_five_validation_slices():
    from mrifoundry.tasks.evaluation.fewshot import FewShotConfig, pick_fewshot
    c = FewShotConfig()
    # MRI-CORE §2.2 / §4.3.1 and main.py: 5 + 5 slices, 1024 px, ≥ 1000 epochs, patience 200, lr 1e-4, 10 repeats
    assert (c.k_patients, c.n_val_patients, c.val_slices_per_patient, c.image_size, c.out_size) == (5, 5, 1, 1024, 256)
    assert (c.epochs, c.min_epochs, c.patience, c.val_every, c.lr, c.weight_decay, c.batch_size, c.warmup_iters,
            c.repeats) == (3000, 1000, 200, 10, 1e-4, 0.1, 2, 200, 10)
    assert (c.mode, c.lora_rank, c.encoder_adapter_depths, c.rotation_deg) == ("adapter", 4, (0, 1, 10, 11), 45.0)
    assert FewShotParams(dataset_id="x").mode == "adapter" and FewShotParams(dataset_id="x").sam_checkpoint is None
    rows = [{"patient_id": f"p{p}", "split": "train" if p < 5 else "val", "slice_index": z,
             "has_foreground": 0 < z < 7, "slice_id": f"p{p}z{z}"} for p in range(10) for z in range(8)]
    all_val = pick_fewshot(rows, 5, 5, seed=3)
    five = pick_fewshot(rows, 5, 5, seed=3, val_slices=1)
    assert len(all_val["val"]) == 30 and len(five["val"]) == 5 and len(five["train"]) == 5
    assert sorted(r["patient_id"] for r in five["val"]) == [f"p{p}" for p in range(5, 10)]
    assert all(r["has_foreground"] for r in five["val"]) and five["train"] == all_val["train"]
    draws = {tuple(r["slice_index"] for r in pick_fewshot(rows, 5, 5, seed=s, val_slices=1)["val"]) for s in range(5)}
    assert len(draws) > 1 and pick_fewshot(rows, 5, 5, seed=3, val_slices=1) == five


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    from mrifoundry.sample.labelled import make_phantom_dataset
    from mrifoundry.tasks.ingest.labelled2d import ingest_nifti_pairs
    base = tmp_path_factory.mktemp("fs-decoder")
    research = base / "out" / "research"
    research.mkdir(parents=True)
    ingest_nifti_pairs(research, make_phantom_dataset(base / "src", n_cases=6, seed=0), "phantom", seed=0)
    return research


@pytest.mark.parametrize("mode", ["adapter", "lora", "full"])
def test_run_few_shot_records_mode_and_decoder_provenance(phantom, ckpt, mode):
    from mrifoundry.catalog.views import connect
    from mrifoundry.tasks.evaluation.fewshot import METRICS
    from mrifoundry.tasks.evaluation.runs import run_few_shot
    path, _ = ckpt
    over = {"repeats": 1, "epochs": 4, "k_patients": 2, "n_val_patients": 1, "val_every": 2}
    lines = []
    res = run_few_shot(FewShotParams(dataset_id="phantom", out=str(phantom.parent), model="random", arch="sam_tiny",
                                     preset="tiny", mode=mode, sam_checkpoint=str(path), overrides=over),
                       progress=lines.append)
    eval_id = "fewshot-random-phantom" + ("" if mode == "adapter" else f"-{mode}")
    con = connect(phantom)
    try:
        rows = con.execute("SELECT metric, value, kind, n, details FROM evaluations WHERE eval_id = ? ORDER BY metric",
                           [eval_id]).fetchall()
    finally:
        con.close()
    assert sorted(r[0] for r in rows) == sorted(METRICS) and {(r[2], r[3]) for r in rows} == {("few-shot", 1)}
    details = json.loads(rows[0][4])
    sha = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    assert (details["mode"], details["decoder_source"], details["decoder_sha256"]) == (mode, path.name, sha)
    assert details["decoder_random_keys"] == RANDOM_KEYS_1CLS and details["config"]["mode"] == mode
    plain = build_sam_for_fewshot(build_sam_encoder(TINY), 64, mode="full")
    n_all = sum(p.numel() for p in plain.parameters())
    n_dec = sum(p.numel() for n, p in plain.named_parameters() if n.startswith(DECODER))
    expected = {"adapter": 10720, "lora": n_dec + DEPTH * 2 * 2 * EMBED * 4, "full": n_all}[mode]
    assert details["trainable_params"] == expected
    by = {r[0]: r[1] for r in rows}
    assert by["test_dsc_3d"] == pytest.approx(res["summary"]["test_dsc_3d"]["mean"]) and 0 <= by["test_dsc_3d"] <= 1
    assert f"({mode}; decoder {path.name} ({sha}), 19 decoder tensors random)" in lines[0]
    assert np.isfinite(by["test_nsd_3d"])


def test_run_few_shot_refuses_without_a_decoder_and_a_mode_clash(phantom):
    from mrifoundry.tasks.evaluation.runs import run_few_shot
    p = {"dataset_id": "phantom", "out": str(phantom.parent), "model": "random", "arch": "sam_tiny", "preset": "tiny"}
    with pytest.raises(UsageError, match="--random-decoder"):
        run_few_shot(FewShotParams(**p))
    with pytest.raises(UsageError, match="give --mode only"):
        run_few_shot(FewShotParams(**p, random_decoder=True, mode="lora", overrides={"mode": "full"}))
