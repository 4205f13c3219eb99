"""MAE on the tiny ViT: exact mask ratio, finite loss, overfits one batch."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrifoundry.models.ssl.mae import MAE, patchify, sincos_pos_embed_2d
from mrifoundry.models.vit import VIT_CONFIGS, DinoVisionTransformer


def _mae(**kw):
    torch.manual_seed(0)
    return MAE(DinoVisionTransformer(VIT_CONFIGS["vit_tiny"]), decoder_dim=32, decoder_depth=1, **kw)


@pytest.mark.parametrize("ratio,size", [(0.75, 64), (0.5, 64), (0.75, 48)])
def test_mask_ratio_exact_and_shapes(ratio, size):
    model = _mae(mask_ratio=ratio)
    loss, pred, mask = model(torch.rand(3, 3, size, size))
    n = (size // 16) ** 2
    assert torch.isfinite(loss) and loss.ndim == 0
    assert pred.shape == (3, n, 16 * 16 * 3)
    assert mask.dtype == torch.bool and mask.shape == (3, n)
    assert (mask.sum(1) == n - round(n * (1 - ratio))).all()
    assert not torch.equal(mask[0], mask[1]) or not torch.equal(mask[1], mask[2])  # per-sample masks


def test_patchify_order_matches_patch_embedding():
    img = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(1, 2, 4, 6)
    p = patchify(img, 2)  # 2x3 grid
    assert p.shape == (1, 6, 8)
    # token 4 = row 1, col 1: pixels [2:4, 2:4] of both channels, channel last
    expected = img[0, :, 2:4, 2:4].permute(1, 2, 0).reshape(-1)
    assert torch.equal(p[0, 4], expected)


def test_sincos_positions_distinct():
    pe = sincos_pos_embed_2d(3, 4, 16)
    assert pe.shape == (12, 16)
    d = torch.cdist(pe, pe) + torch.eye(12)
    assert d.min() > 0
    with pytest.raises(ValueError):
        sincos_pos_embed_2d(2, 2, 6)


def test_loss_only_on_masked_patches_with_norm_pix():
    model = _mae()
    images = torch.rand(2, 3, 64, 64)
    torch.manual_seed(3)
    loss, pred, mask = model(images)
    target = patchify(images, 16).numpy().astype(np.float64)
    target = (target - target.mean(-1, keepdims=True)) / np.sqrt(target.var(-1, ddof=1, keepdims=True) + 1e-6)
    per_patch = ((pred.detach().numpy() - target) ** 2).mean(-1)
    assert loss.item() == pytest.approx(per_patch[mask.numpy()].mean(), rel=1e-4)


def test_encoder_mask_token_frozen():
    model = _mae()
    assert not model.encoder.mask_token.requires_grad
    loss, _, _ = model(torch.rand(2, 3, 64, 64))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_overfits_one_batch():
    model = _mae()
    # smooth images (upsampled 6x6 noise): per-patch-normalised targets a tiny decoder can fit
    g = torch.Generator().manual_seed(1)
    images = F.interpolate(torch.rand(2, 1, 6, 6, generator=g), size=64, mode="bilinear").expand(-1, 3, -1, -1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(30):
        torch.manual_seed(0)  # the same masks every step: a fixed regression problem
        loss, _, _ = model(images)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.85 * losses[0]
