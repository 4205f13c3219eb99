"""BrainSegFounder pretraining: NT-Xent against a loop re-implementation, the augmentations,
the tiny pretrainer (gradients, overfitting one batch) and the published checkpoint layout."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.networks.nets import SwinUNETR

from mrifoundry.models.encoders3d import build_encoder3d
from mrifoundry.models.ssl3d.brainsegfounder import (BrainSegFounderPretrainer, _cuboid_mask, _head_tokens,
                                          _reconstruction_decoder, cuboid_dropout, load_brainsegfounder_encoder,
                                          load_into_swinunetr, random_rotation, rotate_volumes)
from mrifoundry.models.ssl3d.losses3d import nt_xent

# --------------------------------------------------------------------------- NT-Xent


def _nt_xent_loops(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    z = np.concatenate([z1, z2]).astype(np.float64)
    z = [v / math.sqrt(sum(c * c for c in v)) for v in z]
    n, b = len(z), len(z) // 2
    total = 0.0
    for i in range(n):
        sims = [sum(a * c for a, c in zip(z[i], z[k])) / t for k in range(n)]
        denominator = sum(math.exp(s) for k, s in enumerate(sims) if k != i)
        total += -math.log(math.exp(sims[(i + b) % n]) / denominator)
    return total / n


@pytest.mark.parametrize("b, d", [(1, 3), (4, 16), (7, 5)])
def test_nt_xent_matches_loops(b, d):
    g = torch.Generator().manual_seed(b)
    z1, z2 = torch.randn(b, d, generator=g) * 3, torch.randn(b, d, generator=g)
    got = nt_xent(z1, z2, temperature=0.5)
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_nt_xent_loops(z1.numpy(), z2.numpy(), 0.5), rel=1e-5)
    # the anchors' order does not matter, the views' order does not either
    assert nt_xent(z2, z1).item() == pytest.approx(got.item(), rel=1e-6)


def test_nt_xent_aligned_orthogonal_pairs():
    # z1 = z2 = orthonormal rows: positive similarity 1, the 2B - 2 others 0
    b, t = 4, 0.5
    z = torch.eye(b, 6)
    assert nt_xent(z, 2 * z, t).item() == pytest.approx(math.log(1 + (2 * b - 2) * math.exp(-1 / t)), rel=1e-6)


def test_nt_xent_float32_from_bf16_and_shape_errors():
    z1, z2 = torch.randn(3, 8), torch.randn(3, 8)
    got = nt_xent(z1.bfloat16(), z2.bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(_nt_xent_loops(z1.bfloat16().float().numpy(), z2.bfloat16().float().numpy(),
                                                      0.5), rel=1e-5)
    with pytest.raises(ValueError):
        nt_xent(z1, z2[:2])
    with pytest.raises(ValueError):
        nt_xent(z1, z2, temperature=0.0)


# --------------------------------------------------------------------------- rotations


def test_rotations():
    x = torch.randn(3, 2, 4, 6, 6)
    assert torch.equal(rotate_volumes(x, torch.full((3,), 4)), x)
    assert torch.equal(rotate_volumes(x, torch.zeros(3, dtype=torch.long)), x)
    k = torch.tensor([1, 2, 3])
    turned = rotate_volumes(x, k)
    assert torch.equal(rotate_volumes(turned, 4 - k), x)
    # the paper's plane: dims (2, 3) of each [C, H, W, D] sample, i.e. H slices are turned in place
    for i in range(3):
        np.testing.assert_array_equal(turned[i].numpy(), np.rot90(x[i].numpy(), int(k[i]), axes=(2, 3)))
    assert torch.allclose(turned.sum(dim=(3, 4)), x.sum(dim=(3, 4)), atol=1e-5)
    assert not torch.equal(turned[0], x[0])
    with pytest.raises(ValueError):  # a quarter turn of a 6 × 4 plane
        rotate_volumes(x, torch.tensor([1, 0, 0]), dims=(2, 3))
    assert torch.equal(rotate_volumes(x, torch.tensor([2, 0, 0]), dims=(2, 3))[0], x[0].flip(1, 2))


def test_random_rotation_seeded():
    x = torch.randn(64, 1, 2, 2, 2)
    torch.manual_seed(3)
    turned, k = random_rotation(x)
    torch.manual_seed(3)
    turned2, k2 = random_rotation(x)
    assert torch.equal(k, k2) and torch.equal(turned, turned2)
    assert k.dtype == torch.int64 and set(k.tolist()) == {0, 1, 2, 3}
    assert torch.equal(turned, rotate_volumes(x, k))


# --------------------------------------------------------------------------- cuboid drop-out


def test_cuboid_blocks_within_max_block():
    torch.manual_seed(0)
    for _ in range(20):
        block = _cuboid_mask((32, 40, 24), 1e-9, 0.25).nonzero()  # one cuboid
        sides = (block.max(0).values - block.min(0).values + 1).tolist()
        assert all(1 <= s <= int(0.25 * n) for s, n in zip(sides, (32, 40, 24)))
        assert len(block) == math.prod(sides)


def test_cuboid_dropout_noise_only():
    torch.manual_seed(0)
    x = torch.rand(8, 2, 32, 32, 32) * torch.arange(1, 9).view(8, 1, 1, 1, 1) + 10 * torch.arange(8).view(8, 1, 1, 1, 1)
    out, mask = cuboid_dropout(x, max_fraction=0.3, max_block=0.25, swap=False)
    assert mask.shape == (8, 1, 32, 32, 32) and mask.dtype == torch.bool
    covered = mask.float().mean(dim=(1, 2, 3, 4))
    assert (covered <= 0.3 + 8 ** 3 / 32 ** 3).all() and covered.mean() > 0.03
    changed = out != x
    assert not (changed & ~mask).any()  # only masked voxels change …
    assert changed[mask.expand_as(x)].float().mean() > 0.99  # … and (almost) all of them, in every channel
    for i in range(8):  # the noise has the sample's per-channel mean and std
        for c in range(2):
            filled = out[i, c][mask[i, 0]]
            if filled.numel() > 500:
                assert filled.mean().item() == pytest.approx(x[i, c].mean().item(), abs=0.15 * x[i, c].std().item())
                assert filled.std().item() == pytest.approx(x[i, c].std().item(), rel=0.15)


def test_cuboid_dropout_swap_and_seeding():
    x = torch.rand(4, 1, 32, 32, 32)
    x[:, :, ::2] = 0  # a pattern to recognise: no noise sample is exactly 0
    before = x.clone()
    torch.manual_seed(5)
    out, mask = cuboid_dropout(x)
    assert torch.equal(x, before)  # not in place
    torch.manual_seed(5)
    out2, mask2 = cuboid_dropout(x)
    assert torch.equal(out, out2) and torch.equal(mask, mask2)
    assert not ((out != x) & ~mask).any()
    covered = mask.float().mean(dim=(1, 2, 3, 4))
    assert (covered <= 2 * (0.3 + 8 ** 3 / 32 ** 3)).all()
    # swapped cuboids carry another sample's voxels: exact zeros inside the mask on even slices
    assert ((out[:, :, ::2] == 0) & mask[:, :, ::2]).any()
    with pytest.raises(ValueError):
        cuboid_dropout(x, max_fraction=1.0)


# --------------------------------------------------------------------------- pretrainer


def test_head_tokens_and_decoder():
    deep = torch.randn(2, 16, 3, 3, 3)
    rot_in, con_in = _head_tokens(deep)  # the paper's tokens 0 and 1 of the flattened map
    assert torch.equal(rot_in, deep[:, :, 0, 0, 0]) and torch.equal(con_in, deep[:, :, 0, 0, 1])
    single = deep[..., :1, :1, :1]
    assert all(torch.equal(t, single[:, :, 0, 0, 0]) for t in _head_tokens(single))
    dec = _reconstruction_decoder(32, 2)
    assert [k for k in dec.state_dict() if k.endswith("weight")] == [f"{i}.weight" for i in (0, 4, 8, 12, 16, 20)]
    assert dec(torch.randn(1, 32, 2, 2, 2)).shape == (1, 2, 64, 64, 64)
    normed = dec[:2](torch.randn(1, 32, 2, 2, 2))  # instance norm is active on maps of > 1 voxel
    assert normed.mean(dim=(2, 3, 4)).abs().max() < 1e-5


def test_pretrainer_losses_and_gradients():
    torch.manual_seed(0)
    model = BrainSegFounderPretrainer("swin_tiny", roi=32, contrastive_dim=32, weights=(1.0, 2.0, 0.5))
    out = model({"image": torch.rand(2, 1, 32, 32, 32)})
    assert set(out) == {"loss", "rotation", "contrastive", "reconstruction"}
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())
    expected = out["rotation"] + 2 * out["contrastive"] + 0.5 * out["reconstruction"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    out["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for head in (model.rotation_head, model.contrastive_head, model.conv[0], model.encoder3d.swinViT.patch_embed.proj):
        assert head.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        model({"image": torch.rand(2, 2, 32, 32, 32)})


def test_pretrainer_under_bf16_autocast():
    torch.manual_seed(0)
    model = BrainSegFounderPretrainer("swin_tiny", roi=32, contrastive_dim=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model({"image": torch.rand(2, 1, 32, 32, 32)})
    assert all(torch.isfinite(v) and v.dtype == torch.float32 for v in out.values())


def test_pretrainer_overfits_one_batch():
    torch.manual_seed(0)
    model = BrainSegFounderPretrainer("swin_tiny", roi=32, contrastive_dim=32)
    batch = {"image": torch.rand(2, 1, 32, 32, 32)}
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    history = []
    for _ in range(20):
        torch.manual_seed(1)  # the same two views every step: one fixed batch
        out = model(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        history.append({k: v.item() for k, v in out.items()})
    first, last = history[0], history[-1]
    assert all(math.isfinite(v) for h in history for v in h.values())
    assert last["loss"] < 0.5 * first["loss"]
    for term in ("rotation", "contrastive", "reconstruction"):
        assert last[term] < 0.8 * first[term], term


# --------------------------------------------------------------------------- published layout


def _published_checkpoint() -> tuple[dict, dict]:
    """``model_bestValRMSE.pt`` for swin_tiny: random tensors, BrainSegFounder's keys."""
    g = torch.Generator().manual_seed(0)
    shapes = BrainSegFounderPretrainer("swin_tiny", roi=32).state_dict()
    sd = {}
    for key, v in shapes.items():
        key = "module." + key.removeprefix("encoder3d.")
        sd[key] = (torch.randn(v.shape, generator=g) if v.is_floating_point()
                   else torch.randint(0, 50, v.shape, generator=g))
    assert {k.split(".")[1] for k in sd} == {"swinViT", "rotation_head", "contrastive_head", "conv"}
    ckpt = {"global_step": 1200, "epoch": 3, "state_dict": sd,
            "optimizer": {"state": {}, "param_groups": [{"lr": 4e-4, "betas": (0.9, 0.999), "weight_decay": 0.1,
                                                          "params": [0, 1]}]}}
    swin = {k.removeprefix("module.swinViT."): v for k, v in sd.items() if k.startswith("module.swinViT.")}
    return ckpt, swin


def test_load_published_checkpoint(tmp_path):
    ckpt, swin = _published_checkpoint()
    path = tmp_path / "model_bestValRMSE.pt"
    torch.save(ckpt, path)
    enc = load_brainsegfounder_encoder(path, "swin_tiny")
    got = enc.swinViT.state_dict()
    assert got.keys() == swin.keys() and all(torch.equal(got[k], swin[k]) for k in swin)
    # our own layout round-trips too
    model = BrainSegFounderPretrainer("swin_tiny", roi=32)
    ours = model.encoder_state_dict()
    assert all(k.startswith("swinViT.") for k in ours)
    back = load_brainsegfounder_encoder(ours, "swin_tiny").state_dict()
    assert all(torch.equal(back[k], v) for k, v in ours.items())
    resumed = load_brainsegfounder_encoder({"model": model.state_dict()}, "swin_tiny").state_dict()
    assert all(torch.equal(resumed[k], v) for k, v in ours.items())


def test_wrong_layouts_raise():
    ckpt, _ = _published_checkpoint()
    with pytest.raises(ValueError, match="no swinViT"):
        load_brainsegfounder_encoder({"state_dict": {"module.encoder.stages.0.weight": torch.zeros(1)}}, "swin_tiny")
    sd = dict(ckpt["state_dict"])
    del sd["module.swinViT.layers1.0.blocks.0.norm1.weight"]
    with pytest.raises(ValueError, match="missing"):
        load_brainsegfounder_encoder({"state_dict": sd}, "swin_tiny")
    with pytest.raises(ValueError, match="shape mismatch"):
        load_brainsegfounder_encoder(ckpt, "swin_tiny", in_channels=2)
    with pytest.raises(ValueError, match="not one of"):
        load_brainsegfounder_encoder(ckpt, "unet_tiny")


def _swinunetr(in_channels: int, window_size: int = 4) -> SwinUNETR:
    # swin_tiny's sizes: embed 12, depths 1-1-1-1, heads 1-1-2-2, window 4, v1 blocks
    return SwinUNETR(in_channels=in_channels, out_channels=2, feature_size=12, depths=(1, 1, 1, 1),
                     num_heads=(1, 1, 2, 2), window_size=window_size)


def test_load_into_swinunetr():
    ckpt, swin = _published_checkpoint()
    assert set(_swinunetr(1).swinViT.state_dict()) == set(build_encoder3d("swin_tiny").swinViT.state_dict())
    model = _swinunetr(1)
    out_before = model.out.conv.conv.weight.clone()
    assert load_into_swinunetr(model, ckpt) == []
    got = model.swinViT.state_dict()
    assert all(torch.equal(got[k], swin[k]) for k in swin)
    assert torch.equal(model.out.conv.conv.weight, out_before)  # the segmentation part is left alone

    model4 = _swinunetr(4)
    fresh = {k: v.clone() for k, v in model4.swinViT.patch_embed.state_dict().items()}
    skipped = load_into_swinunetr(model4, ckpt)
    assert skipped == ["swinViT.patch_embed.proj.weight", "swinViT.patch_embed.proj.bias"]
    got = model4.swinViT.state_dict()
    assert all(torch.equal(got[k], swin[k]) for k in swin if not k.startswith("patch_embed."))
    assert all(torch.equal(model4.swinViT.patch_embed.state_dict()[k], v) for k, v in fresh.items())
    with pytest.raises(ValueError, match="input channels"):
        load_into_swinunetr(_swinunetr(4), ckpt, skip_patch_embed_if_channels_differ=False)
    with pytest.raises(ValueError, match="relative_position"):  # the window size is part of the weights
        load_into_swinunetr(_swinunetr(1, window_size=7), ckpt)
