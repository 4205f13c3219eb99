"""SAM adapters (MRI-CORE placement) and the prompt-free few-shot SAM, on sam_tiny."""
from __future__ import annotations

import copy
from dataclasses import replace

import pytest
import torch
from segment_anything.modeling.image_encoder import Block
from segment_anything.modeling.transformer import TwoWayAttentionBlock

from mrifoundry.models.adapters import (AdaptedBlock, AdaptedTwoWayBlock, Adapter, add_decoder_adapters,
                             add_encoder_adapters, adapter_parameter_names, build_sam_for_fewshot,
                             freeze_all_but_adapters)
from mrifoundry.models.sam_encoder import SAM_CONFIGS, build_sam_encoder

TINY = SAM_CONFIGS["sam_tiny"]


def _encoder(cfg=TINY, seed=0):
    torch.manual_seed(seed)
    return build_sam_encoder(cfg).eval()


def _randomise_adapters(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "adapter" in n:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def test_adapter_zero_init_and_skip():
    x = torch.randn(3, 5, 16)
    assert torch.equal(Adapter(16)(x), x)
    assert torch.equal(Adapter(16, skip=False)(x), torch.zeros_like(x))
    assert Adapter(16).down.out_features == 4
    # MRI-CORE's init (PyTorch default) is not identity
    torch.manual_seed(0)
    assert not torch.allclose(Adapter(16, zero_init=False)(x), x)
    with pytest.raises(ValueError):
        Adapter(2, ratio=0.25)


def test_fresh_adapters_leave_encoder_output_unchanged():
    enc = _encoder()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = enc(x)
        assert add_encoder_adapters(enc) == (0, 1)
        assert torch.equal(enc(x), ref)


def test_adapted_block_formula():
    enc = _encoder()
    blk = enc.blocks[1]  # global attention in sam_tiny: no window partition
    assert blk.window_size == 0
    AdaptedBlock.adapt(blk)
    _randomise_adapters(blk)
    x = torch.randn(2, 4, 4, TINY.embed_dim)
    with torch.no_grad():
        h = x + blk.space_adapter(blk.attn(blk.norm1(x)))
        n2 = blk.norm2(h)
        want = h + blk.mlp(n2) + 0.5 * blk.mlp_adapter(n2)
        torch.testing.assert_close(blk(x), want)
        # the windowed block runs too and its adapters change the output
        w = enc.blocks[0]
        ref = w(x)
        AdaptedBlock.adapt(w)
        _randomise_adapters(w)
        assert not torch.allclose(w(x), ref)


def test_adapter_placement_depths_and_keys():
    cfg = replace(TINY, depth=4, global_attn_indexes=(3,))
    enc = _encoder(cfg)
    keys = set(enc.state_dict())
    assert add_encoder_adapters(enc, depths=(3, 1, 7)) == (1, 3)
    assert [type(b) for b in enc.blocks] == [Block, AdaptedBlock, Block, AdaptedBlock]
    # original keys unchanged (SAM checkpoints still load); only adapter keys added
    new = set(enc.state_dict()) - keys
    assert keys <= set(enc.state_dict())
    assert new and all(k.split(".")[2] in ("space_adapter", "mlp_adapter") for k in new)
    assert {k.split(".")[1] for k in new} == {"1", "3"}
    with pytest.raises(ValueError, match="already"):
        add_encoder_adapters(enc, depths=(1,))
    with pytest.raises(ValueError, match="negative"):
        add_encoder_adapters(_encoder(cfg), depths=(-1,))
    assert add_encoder_adapters(_encoder(), depths=(10, 11)) == ()


def test_decoder_adapters_identity_then_active():
    torch.manual_seed(0)
    plain = build_sam_for_fewshot(_encoder(), 64, adapters=False).eval()
    adapted = copy.deepcopy(plain)
    assert add_decoder_adapters(adapted.mask_decoder) == 2
    assert all(type(b) is AdaptedTwoWayBlock for b in adapted.mask_decoder.transformer.layers)
    add_encoder_adapters(adapted.image_encoder)
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), plain(x))
        _randomise_adapters(adapted.mask_decoder)
        assert not torch.allclose(adapted(x), plain(x))
    with pytest.raises(ValueError, match="already"):
        add_decoder_adapters(adapted.mask_decoder)
    assert type(plain.mask_decoder.transformer.layers[0]) is TwoWayAttentionBlock


def test_only_adapters_trainable_and_get_gradients():
    torch.manual_seed(0)
    enc = _encoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    sam = build_sam_for_fewshot(enc, 64)
    # the caller's encoder is copied, never modified
    assert all(torch.equal(before[k], v) for k, v in enc.state_dict().items())
    assert not any(isinstance(b, AdaptedBlock) for b in enc.blocks)
    trainable = [n for n, p in sam.named_parameters() if p.requires_grad]
    assert trainable == adapter_parameter_names(sam) and trainable
    assert all("adapter" in n for n in trainable)
    assert freeze_all_but_adapters(sam) == sum(p.numel() for p in sam.parameters() if p.requires_grad)
    sam(torch.rand(2, 1, 64, 64)).sum().backward()
    grads = {n for n, p in sam.named_parameters() if p.grad is not None}
    assert grads <= set(trainable)
    # zero-init: the up projections get gradient first (down's is zero until up moves)
    ups = [n for n in trainable if n.endswith("up.weight")]
    assert len(ups) == 8  # 2 encoder blocks × 2 + 2 decoder blocks × 2
    params = dict(sam.named_parameters())
    assert all(params[n].grad.abs().sum() > 0 for n in ups)


def test_forward_shapes_and_errors():
    torch.manual_seed(0)
    sam = build_sam_for_fewshot(_encoder(), 64)
    assert sam(torch.rand(3, 1, 64, 64)).shape == (3, 1, 16, 16)
    assert sam(torch.rand(1, 3, 64, 64)).shape == (1, 1, 16, 16)
    two = build_sam_for_fewshot(_encoder(), 64, num_classes=2, adapters=False)
    assert two(torch.rand(2, 1, 64, 64)).shape == (2, 2, 16, 16)
    assert all(p.requires_grad for p in two.parameters())
    with pytest.raises(ValueError, match="64x64"):
        sam(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="image_size"):
        build_sam_for_fewshot(_encoder(), 128)
    with pytest.raises(TypeError):
        build_sam_for_fewshot(torch.nn.Linear(2, 2), 64)
    with pytest.raises(ValueError, match="adapter"):
        freeze_all_but_adapters(torch.nn.Linear(2, 2))


def test_decoder_weights_from_sam_checkpoint(tmp_path):
    torch.manual_seed(1)
    src = build_sam_for_fewshot(_encoder(), 64, num_classes=3, adapters=False)
    path = tmp_path / "sam.pth"
    torch.save(src.state_dict(), path)
    torch.manual_seed(2)
    sam = build_sam_for_fewshot(_encoder(), 64, sam_checkpoint=path)
    s, d = src.state_dict(), sam.state_dict()
    # 4 vs 2 mask tokens: tokens, hypernetworks and IoU head stay random (MRI-CORE), the rest loads
    tied = ("mask_decoder.mask_tokens", "mask_decoder.output_hypernetworks_mlps", "mask_decoder.iou_prediction_head")
    assert sam.decoder_missing_keys == sorted(k for k in d if k.startswith(tied))
    assert not torch.equal(s["mask_decoder.output_hypernetworks_mlps.0.layers.0.weight"],
                           d["mask_decoder.output_hypernetworks_mlps.0.layers.0.weight"])
    for k in ("mask_decoder.transformer.layers.0.self_attn.q_proj.weight", "prompt_encoder.no_mask_embed.weight",
              "mask_decoder.output_upscaling.0.weight", "mask_decoder.transformer.final_attn_token_to_image.v_proj.bias"):
        assert torch.equal(s[k], d[k])
    # same token count: everything in the decoder loads
    torch.save(build_sam_for_fewshot(_encoder(), 64, adapters=False).state_dict(), path)
    assert build_sam_for_fewshot(_encoder(), 64, sam_checkpoint=path).decoder_missing_keys == []
