"""The pretraining benchmark's code path on CPU (tiny), and its FLOP accounting against the
closed-form ViT count (the GPU figures in docs/benchmarks.md rest on it)."""
from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from bench.gpu_pretrain import measured_flops, render_markdown, run, vit_flops_closed_form
from mrifoundry.models.vit import VIT_CONFIGS, DinoVisionTransformer


@pytest.mark.parametrize("arch,size", [("vit_tiny", 64), ("vit_b16", 224)])
def test_flop_counter_matches_closed_form(arch, size):
    cfg = dataclasses.replace(VIT_CONFIGS[arch], img_size=size)
    model = DinoVisionTransformer(cfg)
    counted = measured_flops(model, torch.randn(1, 3, size, size), backward=False)
    closed = vit_flops_closed_form(cfg.depth, cfg.embed_dim, (size // cfg.patch_size) ** 2 + 1, cfg.patch_size)
    assert counted == pytest.approx(closed, rel=0.01)
    if arch == "vit_b16":
        assert closed / 1e9 == pytest.approx(35.1, abs=0.1)  # ViT-B/16 at 224²: ≈ 17.6 GMAC (timm's figure)


def test_tiny_benchmark_runs_on_cpu():
    res = run(tiny=True, batch=4, steps=2, warmup=1)
    for part in ("vit", "dino"):
        assert math.isfinite(res[part]["images_per_s"]) and res[part]["images_per_s"] > 0
    # fwd+bwd ≈ 3× the forward count
    fwd = vit_flops_closed_form(2, 64, 17, 16)
    assert res["vit"]["tflops_per_image_fwd_bwd"] * 1e12 == pytest.approx(3 * fwd, rel=0.1)
    md = render_markdown(res)
    assert "vit_tiny 64²" in md and "images/s" in md
