"""SAM ↔ DINOv2 state-dict converters and the MRI-CORE → SAM loader."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mrifoundry.models.convert import (dinov2_to_sam, load_mri_core_into_sam, resize_sam_encoder_state,
                            sam_to_dinov2)
from mrifoundry.models.heads import DINOHead
from mrifoundry.models.sam_encoder import SAM_CONFIGS, build_sam_encoder, sam_blocks_forward
from mrifoundry.models.vit import VIT_CONFIGS, DinoVisionTransformer, chunk_block_keys, resize_pos_grid

SAM_TINY = SAM_CONFIGS["sam_tiny"]  # 64 px, 4x4 tokens, window 2, rel_pos
VIT_TINY = VIT_CONFIGS["vit_tiny"]  # 64 px, 4x4 tokens
# window == token grid and no rel_pos: SAM's blocks are plain global attention
SAM_GLOBAL = replace(SAM_TINY, window_size=4, use_rel_pos=False)


def _randomise(sd: dict, seed: int) -> dict:
    """Every tensor random (SAM zero-initialises pos_embed and rel_pos, which would hide bugs)."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) * 0.2 for k, v in sd.items()}


def _sam_sd(cfg=SAM_TINY, seed=0) -> dict:
    return _randomise(build_sam_encoder(cfg).state_dict(), seed)


def _vit_sd(cfg=VIT_TINY, seed=1) -> dict:
    return _randomise(DinoVisionTransformer(cfg).state_dict(), seed)


def _patch_only(vit: DinoVisionTransformer, x: torch.Tensor) -> torch.Tensor:
    """The ViT's blocks on patch tokens alone (no cls token in attention), ``[B, N, D]``."""
    z = vit.patch_embed(x) + vit.pos_embed[:, 1:]
    for blk in vit.blocks:
        z = blk(z)
    return z


# ------------------------------------------------------------------- SAM → DINOv2

def test_sam_to_dinov2_keys_and_created_tensors():
    sam = _sam_sd()
    d = SAM_TINY.embed_dim
    dino = sam_to_dinov2(sam, grid=4)
    # exactly the ViT's keys: loads strictly
    assert set(dino) == set(DinoVisionTransformer(VIT_TINY).state_dict())
    DinoVisionTransformer(VIT_TINY).load_state_dict(dino)
    # created: cls_token, cls slot, mask_token zeros; norm = identity affine
    assert torch.equal(dino["cls_token"], torch.zeros(1, 1, d))
    assert torch.equal(dino["pos_embed"][:, 0], torch.zeros(1, d))
    assert torch.equal(dino["mask_token"], torch.zeros(1, d))
    assert torch.equal(dino["norm.weight"], torch.ones(d))
    assert torch.equal(dino["norm.bias"], torch.zeros(d))
    # renamed and copied bit for bit
    assert torch.equal(dino["blocks.1.mlp.fc1.weight"], sam["blocks.1.mlp.lin1.weight"])
    assert torch.equal(dino["blocks.0.mlp.fc2.bias"], sam["blocks.0.mlp.lin2.bias"])
    assert torch.equal(dino["blocks.0.attn.qkv.weight"], sam["blocks.0.attn.qkv.weight"])
    # same grid: the patch positions are SAM's, row-major
    assert torch.equal(dino["pos_embed"][0, 1:], sam["pos_embed"].reshape(16, d))
    # dropped: rel_pos and the neck
    assert not any("rel_pos" in k or k.startswith("neck.") for k in dino)


def test_sam_to_dinov2_input_forms_and_options():
    sam = _sam_sd()
    before = {k: v.clone() for k, v in sam.items()}
    full = {f"image_encoder.{k}": v for k, v in sam.items()}
    full["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.zeros(2, 16)
    full["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    a, b = sam_to_dinov2(sam, grid=4), sam_to_dinov2(full, grid=4)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # pure: input untouched, output does not alias it
    assert all(torch.equal(sam[k], before[k]) for k in sam)
    assert a["patch_embed.proj.weight"].data_ptr() != sam["patch_embed.proj.weight"].data_ptr()
    kept = sam_to_dinov2(sam, grid=4, keep_neck=True)
    neck = {k for k in sam if k.startswith("neck.")}
    assert neck and set(kept) - set(a) == neck
    assert all(torch.equal(kept[k], sam[k]) for k in neck)
    none = sam_to_dinov2(sam, grid=4, num_extra_tokens=0)
    assert "cls_token" not in none and none["pos_embed"].shape == (1, 16, 64)
    # 1024 px SAM (64x64) → 224 px ViT (14x14) shape
    resized = sam_to_dinov2(sam, grid=7)
    assert resized["pos_embed"].shape == (1, 1 + 49, 64)
    with pytest.raises(ValueError, match="unexpected key"):
        sam_to_dinov2({**sam, "head.weight": torch.zeros(1)}, grid=4)


def test_sam_round_trip_is_bit_exact():
    sam = _sam_sd()  # with rel_pos tables
    dino = sam_to_dinov2(sam, grid=4, keep_neck=True)
    back = dinov2_to_sam(dino, grid=4, rel_pos=sam, sam_cfg=SAM_TINY)
    assert back.keys() == sam.keys()
    for k in sam:
        assert torch.equal(back[k], sam[k]), k
    build_sam_encoder(SAM_TINY).load_state_dict(back)  # strict


def test_sam_round_trip_through_another_grid():
    sam = _sam_sd()
    back = dinov2_to_sam(sam_to_dinov2(sam, grid=7, keep_neck=True), grid=4, rel_pos=sam,
                         sam_cfg=SAM_TINY)
    for k in sam:
        if k != "pos_embed":
            assert torch.equal(back[k], sam[k]), k
    # resizing is lossy; a constant field survives (bicubic weights sum to 1)
    const = {**sam, "pos_embed": torch.full_like(sam["pos_embed"], 0.3)}
    pos = dinov2_to_sam(sam_to_dinov2(const, grid=7), grid=4)["pos_embed"]
    torch.testing.assert_close(pos, const["pos_embed"])


# ------------------------------------------------------------------- DINOv2 → SAM

def _mri_core_teacher(vit_sd: dict, n_chunks=2) -> dict:
    head = DINOHead(64, out_dim=32, hidden_dim=16, bottleneck_dim=8).state_dict()
    t = {f"backbone.{k}": v for k, v in chunk_block_keys(vit_sd, n_chunks).items()}
    t.update({f"dino_head.{k}": v for k, v in head.items()})
    return t


def test_dinov2_to_sam_drops_and_creates():
    vit = _vit_sd()
    d, hd = 64, 32
    sam = dinov2_to_sam(_mri_core_teacher(vit), grid=4, sam_cfg=SAM_TINY)
    assert set(sam) == set(build_sam_encoder(SAM_TINY).state_dict()) - {
        k for k in build_sam_encoder(SAM_TINY).state_dict() if k.startswith("neck.")}
    # rel_pos created as zeros of SAM's shapes: block 0 windowed (2), block 1 global (4)
    assert torch.equal(sam["blocks.0.attn.rel_pos_h"], torch.zeros(3, hd))
    assert torch.equal(sam["blocks.1.attn.rel_pos_w"], torch.zeros(7, hd))
    assert torch.equal(sam["blocks.1.mlp.lin2.weight"], vit["blocks.1.mlp.fc2.weight"])
    assert torch.equal(sam["pos_embed"], vit["pos_embed"][:, 1:].reshape(1, 4, 4, d))
    assert not any(k.startswith(("cls", "mask", "norm.", "dino_head", "backbone")) for k in sam)
    # no rel_pos without sam_cfg or with use_rel_pos=False; refuses tables it cannot use
    assert not any("rel_pos" in k for k in dinov2_to_sam(vit, grid=4))
    assert not any("rel_pos" in k for k in dinov2_to_sam(vit, grid=4, sam_cfg=SAM_GLOBAL))
    with pytest.raises(ValueError, match="use_rel_pos"):
        dinov2_to_sam(vit, grid=4, rel_pos=_sam_sd(), sam_cfg=SAM_GLOBAL)
    with pytest.raises(ValueError, match="grid"):
        dinov2_to_sam(vit, grid=8, sam_cfg=SAM_TINY)
    with pytest.raises(ValueError, match="unexpected"):
        dinov2_to_sam({**vit, "head.weight": torch.zeros(1)}, grid=4)
    # neck: explicit argument (a full SAM dict works) or carried keys
    donor = {f"image_encoder.{k}": v for k, v in _sam_sd(seed=5).items()}
    with_neck = dinov2_to_sam(vit, grid=4, neck=donor, sam_cfg=SAM_TINY)
    build_sam_encoder(SAM_TINY).load_state_dict(with_neck)
    assert torch.equal(with_neck["neck.0.weight"], donor["image_encoder.neck.0.weight"])
    carried = dinov2_to_sam({**vit, "neck.0.weight": donor["image_encoder.neck.0.weight"]}, grid=4)
    assert torch.equal(carried["neck.0.weight"], donor["image_encoder.neck.0.weight"])
    # 37x37 (DINOv2 518 px) → SAM's 64x64 shape
    big = _vit_sd(replace(VIT_TINY, img_size=16 * 7))
    assert dinov2_to_sam(big, grid=64)["pos_embed"].shape == (1, 64, 64, d)


def test_dinov2_round_trip_is_bit_exact():
    vit = _vit_sd()  # MRI-CORE style: no layerscale
    before = {k: v.clone() for k, v in vit.items()}
    sam = dinov2_to_sam(_mri_core_teacher(vit), grid=4, sam_cfg=SAM_TINY)
    back = sam_to_dinov2(sam, grid=4)
    assert back.keys() == vit.keys()
    recreated = {"cls_token", "mask_token", "norm.weight", "norm.bias"}
    for k in set(vit) - recreated - {"pos_embed"}:
        assert torch.equal(back[k], vit[k]), k
    assert torch.equal(back["pos_embed"][:, 1:], vit["pos_embed"][:, 1:])
    assert all(torch.equal(vit[k], before[k]) for k in vit)


def test_layerscale_is_folded_and_preserves_the_function():
    torch.manual_seed(0)
    cfg = replace(VIT_TINY, layerscale=1e-5)
    vit = DinoVisionTransformer(cfg).eval()
    with torch.no_grad():
        for blk in vit.blocks:  # gammas far from one, as after training
            blk.ls1.gamma.uniform_(0.05, 2.0)
            blk.ls2.gamma.uniform_(0.05, 2.0)
    sam_sd = dinov2_to_sam(vit.state_dict(), grid=4, sam_cfg=SAM_GLOBAL)
    assert not any("ls1" in k or "ls2" in k for k in sam_sd)
    g = vit.blocks[0].ls1.gamma.detach()
    torch.testing.assert_close(sam_sd["blocks.0.attn.proj.bias"], vit.blocks[0].attn.proj.bias * g)
    sam = build_sam_encoder(SAM_GLOBAL).eval()
    missing = sam.load_state_dict(sam_sd, strict=False).missing_keys
    assert all(k.startswith("neck.") for k in missing)
    plain = DinoVisionTransformer(VIT_TINY).eval()  # no layerscale
    plain.load_state_dict(sam_to_dinov2(sam_sd, grid=4), strict=False)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref = _patch_only(vit, x)
        torch.testing.assert_close(sam_blocks_forward(sam, x).flatten(2).transpose(1, 2), ref,
                                   atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(_patch_only(plain, x), ref, atol=1e-5, rtol=1e-5)


def test_dinov2_checkpoint_initialises_a_layerscale_free_backbone(tmp_path):
    """BrainFound's start: a hub-layout DINOv2 backbone with layerscale → the trainer's
    backbone (no layerscale) computes the same function; another crop size resizes pos_embed."""
    from mrifoundry.models.ssl.dino import init_from_dinov2
    torch.manual_seed(1)
    hub = DinoVisionTransformer(replace(VIT_TINY, layerscale=1e-5)).eval()
    with torch.no_grad():
        for blk in hub.blocks:
            blk.ls1.gamma.uniform_(0.05, 2.0)
            blk.ls2.gamma.uniform_(0.05, 2.0)
    torch.save(hub.state_dict(), tmp_path / "dinov2_hub.pth")
    plain = DinoVisionTransformer(VIT_TINY).eval()
    init_from_dinov2(plain, tmp_path / "dinov2_hub.pth")
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(plain.forward_features(x)["x_norm_patchtokens"],
                                   hub.forward_features(x)["x_norm_patchtokens"], atol=1e-5, rtol=1e-5)
    bigger = DinoVisionTransformer(replace(VIT_TINY, img_size=96)).eval()
    init_from_dinov2(bigger, tmp_path / "dinov2_hub.pth")           # 4×4 → 6×6 positions
    assert bigger.pos_embed.shape[1] == 1 + 36
    torch.testing.assert_close(bigger.pos_embed[:, 0], hub.pos_embed[:, 0])  # the cls slot is kept


# --------------------------------------------- SAM windows == global attention at 224 px

def _sam_and_vit(sam_cfg, vit_cfg, seed=0):
    """SAM encoder with PyTorch's default init (U(±1/sqrt(fan_in)) for linear and conv,
    unit LayerNorms) but pos_embed N(0, 0.02), and the ViT holding the same weights.

    Built on the meta device and filled directly: ViT-B's usual init takes seconds.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        sam, vit = build_sam_encoder(sam_cfg), DinoVisionTransformer(vit_cfg)
    sam, vit = sam.to_empty(device="cpu").eval(), vit.to_empty(device="cpu").eval()
    with torch.no_grad():
        for m in sam.modules():
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
                bound = m.weight[0].numel() ** -0.5
                for p in (m.weight, m.bias):
                    if p is not None:
                        p.uniform_(-bound, bound, generator=g)
            elif hasattr(m, "weight") and m.weight.ndim == 1:  # LayerNorm, LayerNorm2d
                m.weight.fill_(1.0)
                m.bias.zero_()
        sam.pos_embed.normal_(0, 0.02, generator=g)
    vit.load_state_dict(sam_to_dinov2(sam.state_dict(), grid=sam_cfg.grid))
    return sam, vit


def _agreement(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    cos = F.cosine_similarity(a, b, dim=-1).min().item()
    return cos, ((a - b).norm() / a.norm()).item()


def test_sam_windowed_blocks_equal_vit_blocks_when_window_is_the_grid_tiny():
    """Window 4 over a 4x4 grid, rel_pos off, two blocks (one windowed, one global).

    Patch-only ViT blocks equal SAM's blocks to float tolerance (measured max |diff|
    ≤ 4.8e-7 for values up to 2.7). With the ViT's zero cls token taking part in
    attention (1 token in 17), measured over seeds 0-4: min cosine 0.9982-0.9993,
    relative error 0.025-0.033 (random init).
    """
    sam, vit = _sam_and_vit(SAM_GLOBAL, VIT_TINY)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s = sam_blocks_forward(sam, x).flatten(2).transpose(1, 2)
        torch.testing.assert_close(_patch_only(vit, x), s, atol=1e-5, rtol=1e-5)
        cos, rel = _agreement(s, vit.forward_features(x)["x_prenorm"][:, 1:])
    assert cos > 0.99 and rel < 0.1


def test_sam_vit_b_at_224_matches_dinov2_vit_b16():
    """MRI-CORE's SAM ViT-B (window 14, rel_pos off) at 224 px = 14x14 tokens vs our ViT-B/16.

    Random init (PyTorch defaults, pos_embed N(0, 0.02)), one image. Patch-only: max
    |diff| ≤ 2.2e-6 for values up to 5. With the cls token in attention (1 token in
    197), measured over seeds 0-2: min cosine 0.99993-0.99995, relative error
    0.009-0.011.
    """
    sam, vit = _sam_and_vit(replace(SAM_CONFIGS["mri_core_sam"], img_size=224),
                            VIT_CONFIGS["vit_b16"])
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        s = sam_blocks_forward(sam, x).flatten(2).transpose(1, 2)
        torch.testing.assert_close(_patch_only(vit, x), s, atol=2e-5, rtol=1e-5)
        cos, rel = _agreement(s, vit.forward_features(x)["x_prenorm"][:, 1:])
    assert cos > 0.999 and rel < 0.05


# ------------------------------------------------------------- MRI-CORE → SAM loader

SAM_128 = replace(SAM_GLOBAL, img_size=128)  # 8x8 tokens: the 4x4 pos_embed is resized


def test_load_mri_core_writes_resized_pos_embed():
    """Regression for mri_foundation issue #5: pos_embed must come from the checkpoint."""
    vit = _vit_sd()
    ckpt = {"teacher": _mri_core_teacher(vit)}
    enc = build_sam_encoder(SAM_128)
    missing = load_mri_core_into_sam(ckpt, enc)
    expected = resize_pos_grid(vit["pos_embed"][:, 1:].reshape(1, 4, 4, 64), (8, 8))
    assert enc.pos_embed.abs().sum() > 0
    assert torch.equal(enc.pos_embed.detach(), expected)
    assert torch.equal(enc.state_dict()["blocks.1.mlp.lin1.weight"], vit["blocks.1.mlp.fc1.weight"])
    assert missing == [k for k in enc.state_dict() if k.startswith("neck.")]
    # upstream's wrappers
    for wrapped in ({"model": ckpt}, {"student": ckpt["teacher"]}, ckpt["teacher"]):
        e = build_sam_encoder(SAM_128)
        load_mri_core_into_sam(wrapped, e)
        assert torch.equal(e.pos_embed.detach(), expected)


def test_upstream_bug_leaves_pos_embed_zero():
    """What upstream did: the resized pos_embed was stored under the wrong key."""
    ckpt = {"teacher": _mri_core_teacher(_vit_sd())}
    enc = build_sam_encoder(SAM_128)
    missing = load_mri_core_into_sam(ckpt, enc, reproduce_upstream_bug=True)
    assert enc.pos_embed.abs().sum() == 0
    assert "pos_embed" in missing
    # with SAM weights first (upstream's pretrained_sam=True) SAM's positions stay
    init = _sam_sd(SAM_128, seed=3)
    enc = build_sam_encoder(SAM_128)
    assert load_mri_core_into_sam(ckpt, enc, sam_init=init, reproduce_upstream_bug=True) == []
    assert torch.equal(enc.pos_embed.detach(), init["pos_embed"])


def test_load_mri_core_takes_missing_tensors_from_sam_init():
    vit = _vit_sd()
    init = {f"image_encoder.{k}": v for k, v in _sam_sd(replace(SAM_TINY, img_size=128), 3).items()}
    init["mask_decoder.iou_token.weight"] = torch.zeros(1, 32)
    enc = build_sam_encoder(replace(SAM_TINY, img_size=128))  # with rel_pos tables
    assert load_mri_core_into_sam({"teacher": _mri_core_teacher(vit)}, enc, sam_init=init) == []
    sd = enc.state_dict()
    assert torch.equal(sd["neck.2.weight"], init["image_encoder.neck.2.weight"])
    assert torch.equal(sd["blocks.1.attn.rel_pos_h"], init["image_encoder.blocks.1.attn.rel_pos_h"])
    assert not torch.equal(sd["pos_embed"], init["image_encoder.pos_embed"])
    with pytest.raises(ValueError, match="shape"):
        load_mri_core_into_sam({"teacher": _mri_core_teacher(_vit_sd(replace(VIT_TINY, embed_dim=32)))},
                               build_sam_encoder(SAM_128))


def test_resize_sam_encoder_state():
    sam = _sam_sd()
    same = resize_sam_encoder_state({f"image_encoder.{k}": v for k, v in sam.items()}, SAM_TINY)
    assert same.keys() == sam.keys() and all(torch.equal(same[k], sam[k]) for k in sam)
    big = replace(SAM_TINY, img_size=128)
    r = resize_sam_encoder_state(sam, big)
    build_sam_encoder(big).load_state_dict(r)  # strict: every shape fits
    assert r["pos_embed"].shape == (1, 8, 8, 64)
    assert r["blocks.1.attn.rel_pos_h"].shape == (15, 32)  # global block: 2*8-1
    assert torch.equal(r["blocks.0.attn.rel_pos_h"], sam["blocks.0.attn.rel_pos_h"])  # windowed
