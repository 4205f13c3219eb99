"""Triad: log-ratio loss and masked L1 against plain re-implementations, patch masks, the
pretrainer on tiny encoders, and the encoder loader on Triad's published key layouts."""
from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mrifoundry.models.ssl3d.decoder3d import LightDecoder3d, random_patch_mask
from mrifoundry.models.ssl3d.triad import TriadPretrainer, load_triad_encoder, log_ratio_loss, masked_l1

TINY = ["swin_tiny_v2", "unet_tiny"]


def _np_log_ratio(f, y, p, q, eps):
    """Row by row: skip rows whose partners are the row itself or each other."""
    def d(a, r, i):
        return math.sqrt(sum((a[r, k] - a[i, k]) ** 2 for k in range(a.shape[1])) + eps)

    total, n = 0.0, 0
    for r in range(len(f)):
        i, j = p[r], q[r]
        if i == r or j == r or i == j:
            continue
        total += (math.log(d(f, r, i) / d(f, r, j)) - math.log(d(y, r, i) / d(y, r, j))) ** 2
        n += 1
    return total / max(n, 1), n


# --------------------------------------------------------------------------- losses

def test_log_ratio_loss_matches_python_loop():
    rng = np.random.default_rng(0)
    f, y = rng.normal(size=(7, 5)), rng.normal(size=(7, 3))
    p = np.array([3, 1, 4, 0, 6, 2, 5])  # row 1 pairs with itself: skipped
    q = np.array([1, 5, 4, 2, 6, 3, 0])  # rows 2 and 4: i == j, skipped
    expected, n_valid = _np_log_ratio(f, y, p, q, 1e-4)
    assert n_valid == 4
    got = log_ratio_loss(torch.tensor(f, dtype=torch.float32), torch.tensor(y, dtype=torch.float32),
                         perms=(torch.tensor(p), torch.tensor(q)))
    assert got.item() == pytest.approx(expected, rel=1e-5)

    # all rows valid, identical geometry (f = 3·y) → 0; a distorted geometry → > 0
    p, q = np.roll(np.arange(7), 1), np.roll(np.arange(7), 2)
    yt = torch.tensor(y, dtype=torch.float32)
    perms = (torch.tensor(p), torch.tensor(q))
    assert log_ratio_loss(3 * yt, yt, perms=perms, eps=1e-12).item() == pytest.approx(0.0, abs=1e-8)
    assert log_ratio_loss(yt ** 3, yt, perms=perms).item() > 1e-3


def test_log_ratio_loss_default_perms_and_small_batches():
    f, y = torch.randn(6, 4, requires_grad=True), torch.randn(6, 3)
    torch.manual_seed(3)
    a = log_ratio_loss(f, y)
    torch.manual_seed(3)
    p, q = torch.randperm(6), torch.randperm(6)
    expected, _ = _np_log_ratio(f.detach().double().numpy(), y.double().numpy(), p.numpy(), q.numpy(), 1e-4)
    assert a.item() == pytest.approx(expected, rel=1e-5)
    # two samples never form a valid triple: 0, finite, still differentiable
    z = log_ratio_loss(f[:2], y[:2])
    z.backward()
    assert z.item() == 0.0 and torch.isfinite(f.grad).all()


def test_masked_l1_hand_made():
    pred = torch.tensor([[1.0, 5.0], [3.0, 7.0]]).view(1, 2, 2, 1, 1)  # 2 channels, 2 voxels
    target = torch.zeros_like(pred)
    mask = torch.tensor([True, False]).view(1, 1, 2, 1, 1)
    assert masked_l1(pred, target, mask).item() == pytest.approx(2.0)  # (|1| + |3|) / 2
    assert masked_l1(pred, target, torch.ones_like(mask)).item() == pytest.approx(4.0)
    assert masked_l1(pred, target, torch.zeros_like(mask)).item() == 0.0


# --------------------------------------------------------------------------- masks / decoder

def test_random_patch_mask_counts_and_blocks():
    m = random_patch_mask((3, 32), mask_patch=8, ratio=0.6, generator=torch.Generator().manual_seed(0))
    assert m.shape == (3, 1, 32, 32, 32) and m.dtype == torch.bool
    blocks = m.view(3, 4, 8, 4, 8, 4, 8).permute(0, 1, 3, 5, 2, 4, 6).reshape(3, 64, 512)
    assert (blocks.all(-1) | ~blocks.any(-1)).all()  # every 8³ cube fully in or out
    assert blocks.all(-1).sum(1).tolist() == [39] * 3  # ceil(0.6 · 64), as Triad's MaskGenerator
    assert not torch.equal(m[0], m[1])
    again = random_patch_mask((3, 32), mask_patch=8, ratio=0.6, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, again)
    half = random_patch_mask((2, 32), mask_patch=16, ratio=0.5)
    assert half.view(2, -1).sum(1).tolist() == [4 * 16 ** 3] * 2
    with pytest.raises(ValueError):
        random_patch_mask((1, 30), mask_patch=8)


def test_light_decoder_shapes_and_triad_widths():
    dec = LightDecoder3d(320, 1, n_up=5, width=24)
    convs = [b.conv.out_channels for b in dec.blocks]
    assert convs == [12, 6, 3, 1, 1] and dec.adapter.out_channels == 24  # Triad's U-Net decoder
    assert [b.conv.out_channels for b in LightDecoder3d(768, 1, 5, 768).blocks] == [384, 192, 96, 48, 48]
    out = LightDecoder3d(16, 2, n_up=3, width=8)(torch.randn(2, 16, 1, 1, 1))
    assert out.shape == (2, 2, 8, 8, 8)  # a 1-voxel map decodes (its norm is skipped)


# --------------------------------------------------------------------------- pretrainer

def _batch(b: int = 4) -> dict[str, torch.Tensor]:
    img = F.interpolate(torch.rand(b, 1, 4, 4, 4), size=32, mode="trilinear")  # smooth, learnable
    return {"image": img, "text": F.normalize(torch.randn(b, 384), dim=1)}


@pytest.mark.parametrize("name", TINY)
def test_masked_voxels_never_reach_the_encoder(name):
    torch.manual_seed(0)
    m = TriadPretrainer(name, roi=32, mask_patch=8, ssl_hidden=16)
    x = torch.rand(2, 1, 32, 32, 32)
    mask = random_patch_mask((2, 32), mask_patch=8, ratio=0.6)
    x2 = torch.where(mask, torch.rand_like(x), x)
    with torch.no_grad():
        a, b = m._encode(x, mask), m._encode(x2, mask)
        assert all(torch.allclose(u, v, atol=1e-6) for u, v in zip(a, b))
        none = torch.zeros_like(mask)
        assert not torch.allclose(m._encode(x, none)[-1], m._encode(x2, none)[-1], atol=1e-6)
    if name.startswith("swin"):
        assert not m.encoder3d.swinViT.patch_embed._forward_hooks  # the mask hook is removed after use


@pytest.mark.parametrize("name", TINY)
def test_pretrainer_overfits_one_batch_with_gradients_everywhere(name):
    torch.manual_seed(0)
    m = TriadPretrainer(name, roi=32, mask_patch=8, ssl_hidden=32, text_weight=0.1, decoder_width=64)
    batch = _batch(4)
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    losses, texts = [], []
    for step in range(15):
        out = m(batch)
        assert set(out) == {"loss", "recon", "text"}
        opt.zero_grad()
        out["loss"].backward()
        if step == 0:
            no_grad = [n for n, p in m.named_parameters() if p.grad is None]
            assert not no_grad, no_grad
            assert m.ssl_head[0].weight.grad.abs().sum() > 0
        opt.step()
        losses.append(out["loss"].item())
        texts.append(out["text"].item())
        assert out["loss"].item() == pytest.approx(out["recon"].item() + 0.1 * out["text"].item(), rel=1e-5)
    assert np.isfinite(losses).all() and np.isfinite(texts).all()
    assert max(texts) > 0  # some rows of 4 form valid triples
    assert np.mean(losses[-5:]) < 0.7 * losses[0], losses


@pytest.mark.parametrize("text_weight,with_text", [(0.0, True), (0.1, False)])
def test_text_term_off_still_gives_the_head_a_zero_gradient(text_weight, with_text):
    torch.manual_seed(0)
    m = TriadPretrainer("unet_tiny", roi=32, mask_patch=8, ssl_hidden=16, text_weight=text_weight)
    batch = _batch(2)
    if not with_text:
        del batch["text"]
    out = m(batch)
    out["loss"].backward()
    assert out["text"].item() == 0.0
    assert out["loss"].item() == pytest.approx(out["recon"].item())
    assert all(p.grad is not None and not p.grad.any() for p in m.ssl_head.parameters())


def test_pretrainer_rejects_bad_sizes():
    with pytest.raises(ValueError):
        TriadPretrainer("unet_tiny", roi=24, mask_patch=8)  # not a multiple of the stride 16
    with pytest.raises(ValueError):
        TriadPretrainer("swin_tiny_v2", roi=32, mask_patch=3)
    m = TriadPretrainer("unet_tiny", roi=32, mask_patch=8, ssl_hidden=16)
    with pytest.raises(ValueError):
        m({"image": torch.rand(2, 1, 64, 64, 64)})


# --------------------------------------------------------------------------- published layouts

def _triad_plain_unet() -> nn.Module:
    """QuickStart's get_Plain_nnUNet(1), built here from dynamic_network_architectures directly."""
    from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder

    net = nn.Module()
    net.encoder = PlainConvEncoder(1, 6, [min(32 * 2 ** i, 320) for i in range(6)], nn.Conv3d, [[3, 3, 3]] * 6,
                                   [[1, 1, 1]] + [[2, 2, 2]] * 5, [2] * 6, True, nn.InstanceNorm3d,
                                   {"eps": 1e-5, "affine": True}, None, None, nn.LeakyReLU, {"inplace": True},
                                   return_skips=True, nonlin_first=False)
    return net


def _triad_swin_head() -> nn.Module:
    """QuickStart's TriadHead: backbone.swinViT = MONAI SwinTransformer, Swin-B v2."""
    from monai.networks.nets.swin_unetr import SwinTransformer

    head, backbone = nn.Module(), nn.Module()
    backbone.swinViT = SwinTransformer(in_chans=1, embed_dim=48, window_size=(7, 7, 7), patch_size=(2, 2, 2),
                                       depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24], mlp_ratio=4.0, qkv_bias=True,
                                       drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0,
                                       norm_layer=nn.LayerNorm, use_checkpoint=True, spatial_dims=3, use_v2=True)
    head.backbone = backbone
    return head


def _randomised(net: nn.Module) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():  # shared tensors (all_modules duplicates) stay shared
            p.normal_()
    return net.state_dict()


def test_loader_reads_published_plain_conv_unet(tmp_path):
    published = _randomised(_triad_plain_unet())
    assert any(".all_modules." in k for k in published) and all(k.startswith("encoder.stages.") for k in published)
    extra = {"decoder.stages.0.convs.0.conv.weight": torch.randn(3, 3), "decoder.seg_layers.0.weight": torch.randn(2),
             "mask_token_vol": torch.randn(1, 1, 1, 1, 1), "ssl_head.0.weight": torch.randn(4, 4)}
    path = tmp_path / "Triad-PlainConvUNet-MAE.pth"
    torch.save({"model": {**published, **extra}, "epoch": 9}, path)
    enc = load_triad_encoder(path, "triad_unet")
    got = enc.state_dict()
    assert set(got) == set(published)
    assert all(torch.equal(got[k], v) for k, v in published.items())

    with pytest.raises(ValueError, match="1 missing"):
        load_triad_encoder({k: v for k, v in published.items() if not k.endswith("stages.5.0.convs.1.norm.bias")})
    with pytest.raises(ValueError, match="1 unexpected"):
        load_triad_encoder({**published, "encoder.stages.6.0.convs.0.conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="mis-shaped"):
        load_triad_encoder(published, in_channels=2)
    with pytest.raises(ValueError, match="no plainconv encoder keys"):
        load_triad_encoder({"backbone.swinViT.patch_embed.proj.weight": torch.zeros(1)})


def test_loader_reads_published_swin_and_triad_pretraining_checkpoint(tmp_path):
    published = _randomised(_triad_swin_head())
    assert all(k.startswith("backbone.swinViT.") for k in published)
    got = load_triad_encoder(published, "swin_b_v2").state_dict()
    assert all(torch.equal(got["swinViT." + k.removeprefix("backbone.swinViT.")], v) for k, v in published.items())
    assert len(got) == len(published)

    # Triad's own checkpoint-{epoch}.pth: SimMIMSkip_light(encoder=SwinTransformerSkipForSimMIM) + args
    train = {"encoder." + k.removeprefix("backbone."): v for k, v in published.items()}
    train.update({"encoder.mask_token": torch.zeros(1, 1, 48), "upsample.0.weight": torch.zeros(384, 768, 3, 3, 3),
                  "ssl_head.0.weight": torch.zeros(2048, 1488)})
    ckpt = tmp_path / "checkpoint-9.pth"
    torch.save({"model": train, "optimizer": {}, "epoch": 9, "scaler": {"scale": 1.0},
                "args": argparse.Namespace(model_type="swin_skip2", patch_size=(2, 2, 2))}, ckpt)
    got = load_triad_encoder(ckpt, "swin_b_v2").state_dict()
    assert all(torch.equal(got["swinViT." + k.removeprefix("backbone.swinViT.")], v) for k, v in published.items())
    with pytest.raises(ValueError, match="no swin encoder keys"):
        load_triad_encoder({"encoder.stages.0.0.convs.0.conv.weight": torch.zeros(1)}, "swin_b_v2")


@pytest.mark.parametrize("name,prefix", [("swin_tiny_v2", "backbone.swinViT."), ("unet_tiny", "encoder.stages.")])
def test_encoder_state_dict_round_trips(tmp_path, name, prefix):
    torch.manual_seed(0)
    m = TriadPretrainer(name, roi=32, mask_patch=8, ssl_hidden=16)
    sd = m.encoder_state_dict()
    assert sd and all(k.startswith(prefix) for k in sd)
    assert not any("mask_token" in k or "decoder" in k or "ssl_head" in k for k in sd)
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, tmp_path / "enc.pth")
    enc = load_triad_encoder(tmp_path / "enc.pth", name)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(enc(x), m.encoder3d(x)))
