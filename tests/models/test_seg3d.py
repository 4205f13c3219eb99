"""models/seg3d.py: decoder shapes on both encoder kinds, SwinUNETR equivalence, freezing, heads."""
from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SwinUNETR

from mrifoundry.models.encoders3d import build_encoder3d
from mrifoundry.models.seg3d import (build_classifier3d, build_monai_swinunetr, build_segmenter3d, feature_strides, param_groups,
                          segnet_to_swinunetr_state, swinunetr_key, with_in_channels)


def _seeded(name: str, in_channels: int = 1, seed: int = 0):
    torch.manual_seed(seed)
    return build_encoder3d(name, in_channels=in_channels)


def test_feature_strides_match_the_maps_the_encoders_return():
    for name in ("swin_tiny", "unet_tiny"):
        enc = _seeded(name).eval()
        with torch.no_grad():
            feats = enc(torch.rand(1, 1, 32, 32, 32))
        assert feature_strides(enc) == [32 // f.shape[-1] for f in feats]
    assert feature_strides(_seeded("swin_tiny")) == [2, 4, 8, 16, 32]
    assert feature_strides(_seeded("unet_tiny")) == [1, 2, 4, 8, 16]


@pytest.mark.parametrize("name", ["swin_tiny", "unet_tiny"])
@pytest.mark.parametrize("decoder", ["swinunetr", "unetr"])
def test_both_decoders_give_full_size_logits_on_both_encoder_kinds(name, decoder):
    net = build_segmenter3d(_seeded(name, in_channels=2), 3, decoder, feature_size=8).eval()
    with torch.no_grad():
        y = net(torch.rand(2, 2, 32, 64, 32))
    assert y.shape == (2, 3, 32, 64, 32) and torch.isfinite(y).all()


def test_unetr_decoder_upsamples_the_last_step_by_the_shallowest_used_stride():
    swin = build_segmenter3d(_seeded("swin_tiny"), 2, "unetr", feature_size=8).decoder
    unet = build_segmenter3d(_seeded("unet_tiny"), 2, "unetr", feature_size=8).decoder
    # Swin: maps /4, /8, /16 and /32 are used, the /2 map is not: the last step is ×4; unet_tiny: /2 → ×2
    assert swin.levels == [1, 2, 3] and swin.ups[-1].transp_conv.conv.stride == (4, 4, 4)
    assert unet.levels == [1, 2, 3] and unet.ups[-1].transp_conv.conv.stride == (2, 2, 2)
    # PrUp blocks keep their map's resolution (1³ transposed conv, no extra stages); UNETR widths 2f, 4f, 8f
    for block, w in zip(swin.encoders, (16, 32, 64)):
        assert block.transp_conv_init.conv.stride == (1, 1, 1) and len(block.blocks) == 0
        assert block.transp_conv_init.conv.out_channels == w


def test_swinunetr_decoder_trains_on_a_swin_at_64_and_refuses_a_one_voxel_bottleneck():
    net = build_segmenter3d(_seeded("swin_tiny"), 2, "swinunetr").train()
    net(torch.rand(1, 1, 64, 64, 64)).sum().backward()
    assert all(p.grad is not None for p in net.decoder.parameters())
    with pytest.raises(ValueError, match="one voxel"):
        net(torch.rand(1, 1, 32, 32, 32))
    with pytest.raises(ValueError, match="divisible by 32"):
        net.eval()(torch.rand(1, 1, 48, 32, 32))


@pytest.mark.parametrize("name", ["swin_tiny", "swin_tiny_v2"])
def test_swinunetr_decoder_is_monai_swinunetr_key_for_key(name):
    """Our decoder on a Swin encoder, its state mapped onto MONAI's SwinUNETR: a strict load and
    the same logits."""
    ours = build_segmenter3d(_seeded(name, in_channels=2), 3, "swinunetr").eval()
    cfg = ours.encoder.cfg
    monai_net = SwinUNETR(in_channels=2, out_channels=3, feature_size=cfg.embed_dim, depths=cfg.depths,
                          num_heads=cfg.num_heads, window_size=cfg.window_size, use_v2=cfg.use_v2).eval()
    mapped = segnet_to_swinunetr_state(ours.state_dict())
    assert set(mapped) == set(monai_net.state_dict())
    monai_net.load_state_dict(mapped, strict=True)
    x = torch.rand(1, 2, 64, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), monai_net(x), rtol=1e-4, atol=1e-5)
    assert swinunetr_key("decoder.ups.0.transp_conv.conv.weight") == "decoder5.transp_conv.conv.weight"
    assert swinunetr_key("head.weight") is None


def test_build_monai_swinunetr_carries_the_encoder_weights():
    enc = _seeded("swin_tiny_v2", seed=3)
    net = build_monai_swinunetr(enc, 2).eval()
    theirs, ours = net.swinViT.state_dict(), enc.swinViT.state_dict()
    assert set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)
    x = torch.rand(1, 1, 32, 32, 32)
    with torch.no_grad():
        assert torch.equal(net.swinViT(x, True)[-1], enc.eval()(x)[-1])
    with pytest.raises(ValueError, match="Swin encoder"):
        build_monai_swinunetr(_seeded("unet_tiny"), 2)


def test_frozen_encoder_gets_no_gradient_and_stays_in_eval_mode():
    net = build_segmenter3d(_seeded("unet_tiny"), 2, "swinunetr", freeze=True)
    net.train()
    assert not net.encoder.training and net.decoder.training
    net(torch.rand(1, 1, 32, 32, 32)).sum().backward()
    assert all(p.grad is None for p in net.encoder.parameters())
    assert all(p.grad is not None for p in net.decoder.parameters())
    groups = param_groups(net, 1e-3, 1e-5)
    assert [g["name"] for g in groups] == ["head"]


def test_param_groups_give_the_encoder_its_own_lr():
    net = build_segmenter3d(_seeded("unet_tiny"), 2, "unetr", feature_size=8)
    groups = {g["name"]: g for g in param_groups(net, 1e-3, 1e-5)}
    assert groups["head"]["lr"] == 1e-3 and groups["encoder"]["lr"] == 1e-5
    n_enc = sum(p.numel() for p in groups["encoder"]["params"])
    assert n_enc == sum(p.numel() for p in net.encoder.parameters())
    assert n_enc + sum(p.numel() for p in groups["head"]["params"]) == sum(p.numel() for p in net.parameters())


def test_classifier_pools_every_scale_into_a_linear_head():
    net = build_classifier3d(_seeded("swin_tiny"), 3, freeze=True).eval()
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        expected = net.head(net.encoder.pooled(x))
        assert torch.allclose(net(x), expected)
    assert net.head[-1].in_features == sum(net.encoder.channels)
    mlp = build_classifier3d(_seeded("unet_tiny"), 2, hidden=8)
    assert mlp(torch.rand(2, 1, 32, 32, 32)).shape == (2, 2)
    with pytest.raises(ValueError):
        build_classifier3d(_seeded("unet_tiny"), 1)


@pytest.mark.parametrize("name", ["swin_tiny", "unet_tiny"])
def test_with_in_channels_keeps_everything_but_the_input_layer(name):
    enc = _seeded(name)
    wide, skipped = with_in_channels(enc, 4)
    assert wide.cfg.in_channels == 4 and 1 <= len(skipped) <= 2
    old, new = enc.state_dict(), wide.state_dict()
    assert all(torch.equal(old[k], new[k]) for k in old if k not in skipped)
    assert with_in_channels(enc, 1) == (enc, [])
