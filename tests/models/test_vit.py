"""DinoVisionTransformer, DINOHead and the FSDP chunked-key helpers."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from mrifoundry.models.heads import DINOHead, WeightNormLinear
from mrifoundry.models.vit import (VIT_CONFIGS, DinoVisionTransformer, chunk_block_keys,
                        unchunk_block_keys)

TINY = VIT_CONFIGS["vit_tiny"]


def _vit(cfg=TINY, seed=0) -> DinoVisionTransformer:
    torch.manual_seed(seed)
    return DinoVisionTransformer(cfg).eval()


def test_presets():
    b14 = VIT_CONFIGS["vit_b14"]
    assert (b14.img_size, b14.patch_size, b14.embed_dim, b14.layerscale) == (518, 14, 768, 1e-5)
    b16 = VIT_CONFIGS["vit_b16"]
    assert (b16.img_size, b16.patch_size, b16.depth, b16.layerscale) == (224, 16, 12, None)


def test_state_dict_uses_dinov2_unchunked_names():
    sd = _vit().state_dict()
    d, n = TINY.embed_dim, TINY.grid ** 2
    assert sd["cls_token"].shape == (1, 1, d)
    assert sd["pos_embed"].shape == (1, 1 + n, d)
    assert sd["mask_token"].shape == (1, d)
    per_block = {"norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias",
                 "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias",
                 "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
    expected = {"cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight",
                "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    expected |= {f"blocks.{i}.{k}" for i in range(TINY.depth) for k in per_block}
    assert set(sd) == expected
    ls = _vit(replace(TINY, layerscale=1e-5)).state_dict()
    assert set(ls) - set(sd) == {f"blocks.{i}.ls{j}.gamma" for i in range(2) for j in (1, 2)}
    assert torch.equal(ls["blocks.0.ls1.gamma"], torch.full((d,), 1e-5))


def test_init_like_dinov2():
    m = DinoVisionTransformer(replace(TINY, embed_dim=128, depth=4, num_heads=4))
    assert m.cls_token.abs().max() < 1e-4  # N(0, 1e-6)
    assert torch.count_nonzero(m.mask_token) == 0
    assert abs(m.pos_embed.std().item() - 0.02) < 0.004
    fc1 = m.blocks[0].mlp.fc1
    assert abs(fc1.weight.std().item() - 0.02) < 0.002
    assert torch.count_nonzero(fc1.bias) == 0
    assert m.norm.eps == 1e-6 and m.blocks[0].norm1.eps == 1e-6


def test_forward_features_shapes_and_views():
    m = _vit()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = m.forward_features(x)
        assert out["x_norm_clstoken"].shape == (2, 64)
        assert out["x_norm_patchtokens"].shape == (2, 16, 64)
        assert out["x_prenorm"].shape == (2, 17, 64)
        assert out["masks"] is None
        assert torch.equal(m.norm(out["x_prenorm"])[:, 0], out["x_norm_clstoken"])
        assert torch.equal(m(x), out["x_norm_clstoken"])
        grid = m.patch_grid(x)
    assert grid.shape == (2, 64, 4, 4)
    # token n is row n // w, column n % w
    assert torch.equal(grid[:, :, 1, 3], out["x_norm_patchtokens"][:, 7])


def test_masks_replace_patch_tokens_with_mask_token():
    m = _vit()
    with torch.no_grad():
        m.mask_token.normal_()
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    every = torch.ones(1, 16, dtype=torch.bool)
    with torch.no_grad():
        # all patches masked: the image no longer matters
        fa, fb = m.forward_features(a, every), m.forward_features(b, every)
        torch.testing.assert_close(fa["x_prenorm"], fb["x_prenorm"])
        # one masked patch: the token fed to the blocks is mask_token + its position
        masks = torch.zeros(1, 16, dtype=torch.bool)
        masks[0, 5] = True
        tok = m.prepare_tokens(a, masks)
        torch.testing.assert_close(tok[0, 1 + 5], m.mask_token[0] + m.pos_embed[0, 1 + 5])
        torch.testing.assert_close(tok[0, 1 + 4], m.prepare_tokens(a)[0, 1 + 4])
        assert m.forward_features(a, masks)["masks"] is masks


def test_pos_embed_interpolation_keeps_cls_and_matches_dinov2():
    m = _vit()
    with torch.no_grad():
        same = m.interpolate_pos_encoding(4, 4, torch.float32)
        assert torch.equal(same, m.pos_embed)
        p = m.interpolate_pos_encoding(6, 6, torch.float32)  # 96 px local crop
        assert p.shape == (1, 37, 64)
        assert torch.equal(p[:, 0], m.pos_embed[:, 0])
        # DINOv2: bicubic with scale_factor (n + 0.1) / M
        ref = F.interpolate(m.pos_embed[:, 1:].reshape(1, 4, 4, 64).permute(0, 3, 1, 2),
                            scale_factor=(6.1 / 4, 6.1 / 4), mode="bicubic")
        torch.testing.assert_close(p[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 36, 64))
        assert m(torch.rand(2, 3, 96, 96)).shape == (2, 64)
        assert m.patch_grid(torch.rand(1, 3, 48, 80)).shape == (1, 64, 3, 5)


def test_sdpa_attention_matches_explicit_softmax():
    m = _vit()
    attn = m.blocks[0].attn
    x = torch.randn(2, 17, 64)
    with torch.no_grad():
        q, k, v = attn.qkv(x).reshape(2, 17, 3, 2, 32).permute(2, 0, 3, 1, 4)
        w = (q @ k.transpose(-2, -1) / math.sqrt(32)).softmax(-1)
        ref = attn.proj((w @ v).transpose(1, 2).reshape(2, 17, 64))
        torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)


def test_drop_path_only_in_training():
    m = _vit(replace(TINY, drop_path_rate=0.5))
    x = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m(x))  # eval: deterministic
        m.train()
        torch.manual_seed(1)
        outs = [m(x) for _ in range(4)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    plain = _vit().train()
    with torch.no_grad():
        assert torch.equal(plain(x), plain(x))


def test_bf16_forward():
    m = _vit().to(torch.bfloat16)
    with torch.no_grad():
        out = m.forward_features(torch.rand(1, 3, 96, 96, dtype=torch.bfloat16))
    assert out["x_norm_patchtokens"].dtype == torch.bfloat16


# ----------------------------------------------------------------------- chunked keys

def test_chunked_key_names_for_vit_b16():
    # key names only: built on the meta device, nothing is computed
    with torch.device("meta"):
        sd = DinoVisionTransformer(VIT_CONFIGS["vit_b16"]).state_dict()
    ch = chunk_block_keys({f"backbone.{k}": v for k, v in sd.items()}, 4)
    norm1 = sorted((k for k in ch if k.endswith("norm1.weight")), key=lambda k: int(k.split(".")[3]))
    assert norm1 == [f"backbone.blocks.{i // 3}.{i}.norm1.weight" for i in range(12)]
    assert "backbone.blocks.1.3.norm1.weight" in ch
    assert "backbone.blocks.3.11.mlp.fc2.bias" in ch
    assert {"backbone.cls_token", "backbone.pos_embed", "backbone.norm.weight"} <= set(ch)
    assert list(unchunk_block_keys(ch)) == [f"backbone.{k}" for k in sd]


def test_chunk_unchunk_round_trip_and_options():
    sd = _vit(replace(TINY, depth=4)).state_dict()
    ch = chunk_block_keys(sd, 2)
    assert "blocks.0.1.attn.qkv.weight" in ch and "blocks.1.2.attn.qkv.weight" in ch
    back = unchunk_block_keys(ch)
    assert list(back) == list(sd) and all(back[k] is sd[k] for k in sd)
    assert unchunk_block_keys(sd) == sd  # already unchunked: unchanged
    assert chunk_block_keys(sd, 0) == sd
    # DINOv2's uneven split: chunks of depth // n, so 4 blocks in 3 chunks → sizes 1,1,1,1
    assert "blocks.3.3.norm1.weight" in chunk_block_keys(sd, 3)
    with pytest.raises(ValueError, match="already chunked"):
        chunk_block_keys(ch)
    # more chunks than blocks: one block per chunk
    assert "blocks.3.3.norm1.weight" in chunk_block_keys(sd, 8)
    # prefix limits the change to one module
    two = {**{f"student.{k}": v for k, v in sd.items()}, **{f"teacher.{k}": v for k, v in sd.items()}}
    only = chunk_block_keys(two, 2, prefix="teacher.")
    assert "teacher.blocks.1.3.norm2.bias" in only and "student.blocks.3.norm2.bias" in only
    assert unchunk_block_keys(only, prefix="student.") == only
    assert unchunk_block_keys(only) == two


# ----------------------------------------------------------------------------- heads

def test_weight_norm_linear():
    torch.manual_seed(0)
    lin = WeightNormLinear(8, 5)
    assert set(lin.state_dict()) == {"weight_g", "weight_v"}
    assert lin.weight_g.shape == (5, 1) and lin.weight_v.shape == (5, 8)
    assert torch.equal(lin.weight_g, torch.ones(5, 1))
    with torch.no_grad():
        lin.weight_g.mul_(torch.arange(1.0, 6.0)[:, None])
        # each row of the effective weight has norm g
        torch.testing.assert_close(lin.weight.norm(dim=1), torch.arange(1.0, 6.0))
        x = torch.randn(3, 8)
        ref = x @ (lin.weight_v / lin.weight_v.norm(dim=1, keepdim=True)).t() * torch.arange(1.0, 6.0)
        torch.testing.assert_close(lin(x), ref)
    # gradients reach both parameters
    lin(torch.randn(2, 8)).sum().backward()
    assert lin.weight_g.grad is not None and lin.weight_v.grad is not None


def test_dino_head_layout_and_normalisation():
    torch.manual_seed(0)
    head = DINOHead(64, out_dim=100, hidden_dim=48, bottleneck_dim=16)
    assert list(head.state_dict()) == [
        "mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias", "mlp.4.weight",
        "mlp.4.bias", "last_layer.weight_g", "last_layer.weight_v"]
    assert head.state_dict()["mlp.2.weight"].shape == (48, 48)
    assert head.state_dict()["last_layer.weight_v"].shape == (100, 16)
    assert all(torch.count_nonzero(head.mlp[i].bias) == 0 for i in (0, 2, 4))
    assert abs(head.mlp[0].weight.std().item() - 0.02) < 0.003
    assert isinstance(head.mlp[1], torch.nn.GELU)
    x = torch.randn(4, 64)
    with torch.no_grad():
        out = head(x)
        assert out.shape == (4, 100)
        # L2 normalisation before the prototypes: |logits| <= g = 1
        assert out.abs().max() <= 1 + 1e-5
    assert list(DINOHead(8, 10, 6, 4, nlayers=1).state_dict())[:2] == ["mlp.0.weight", "mlp.0.bias"]
    assert len(DINOHead(8, 10, 6, 4, nlayers=4).mlp) == 7
