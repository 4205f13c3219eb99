"""PRISM pretrainer: every term against a numpy re-computation, NaN / -1 masking, cross-synthesis
wiring, overfitting one batch, and the swinViT-suffix checkpoint loader."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mrifoundry.models.encoders3d import build_encoder3d
from mrifoundry.models.ssl3d.prism import PrismPretrainer, load_prism_encoder, meta_l1_loss, part_ce_loss

NAN = float("nan")


def _model(**kw) -> PrismPretrainer:
    torch.manual_seed(0)
    kw = {"encoder": "swin_tiny_v2", "roi": 32, "mask_patch": 8, "anatomy_dim": 48, "n_body_parts": 5, **kw}
    return PrismPretrainer(**kw)


def _batch() -> dict[str, torch.Tensor]:
    """Two exams with different anatomy (a ball each); image2 = another contrast of the same voxels."""
    z = torch.linspace(-1, 1, 32)
    zz, yy, xx = torch.meshgrid(z, z, z, indexing="ij")
    a = ((xx - 0.3) ** 2 + yy ** 2 + zz ** 2 < 0.3).float() * 0.8 + 0.1
    b = ((xx + 0.2) ** 2 + (yy - 0.4) ** 2 + zz ** 2 < 0.2).float() * 0.6 + 0.2
    noise = torch.rand(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))
    image = torch.stack([a, b])[:, None] + 0.05 * noise
    return {"image": image, "image2": 1 - image ** 2,
            "meta": torch.tensor([[2.0, 1.0, 0.1], [NAN, 0.5, 0.5]]),
            "meta2": torch.tensor([[1.0, 1.5, 1.0], [1.2, NAN, NAN]]),
            "body_part": torch.tensor([3, -1])}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().numpy()


def _ntxent(z1: np.ndarray, z2: np.ndarray, t: float) -> float:
    """SimCLR's NT-Xent as MONAI's ContrastiveLoss defines it: mean over all 2B anchors of
    -log(exp(sim(i, partner)/t) / Σ_{k≠i} exp(sim(i, k)/t)), cosine similarity."""
    z = np.concatenate([z1, z2])
    n, b = len(z), len(z1)
    zn = z / np.linalg.norm(z, axis=1, keepdims=True)
    sim = zn @ zn.T
    total = 0.0
    for i in range(n):
        partner = (i + b) % n
        denom = sum(np.exp(sim[i, k] / t) for k in range(n) if k != i)
        total += -np.log(np.exp(sim[i, partner] / t) / denom)
    return total / n


def test_every_term_matches_numpy():
    model = _model(weights={"contrastive": 0.7})
    batch = _batch()
    torch.manual_seed(3)
    out = model(batch)

    # the same mask again (forward draws only the mask from the global RNG), then numpy losses
    torch.manual_seed(3)
    x = torch.cat([batch["image"], batch["image2"]])
    mask = model.random_mask(x)
    with torch.no_grad():
        enc = model.encode(model.mask_input(x, mask))
        swapped = enc.code[[2, 3, 0, 1]]  # image ↔ image2 of each exam
        own, cross = model.decode(enc.anatomy, enc.code), model.decode(enc.anatomy, swapped)
        meta_pred, logits = model.meta_head(enc.code), model.part_head(enc.pooled)
    xn, m = _np(x), _np(mask).astype(bool)
    self_l1 = np.abs(_np(own) - xn)[m].mean()
    cross_l1 = np.abs(_np(cross) - xn[[2, 3, 0, 1]]).mean()
    assert out["recon"].item() == pytest.approx(self_l1 + cross_l1, rel=1e-5)
    # negative control: decoding with the images' own codes gives a different cross term
    assert np.abs(_np(own) - xn[[2, 3, 0, 1]]).mean() != pytest.approx(cross_l1, rel=1e-3)

    target = _np(torch.cat([batch["meta"], batch["meta2"]]))
    known = np.isfinite(target)
    assert known.sum() == 9
    assert out["meta"].item() == pytest.approx(np.abs(_np(meta_pred) - target)[known].mean(), rel=1e-5)

    lg = _np(logits)
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
    labels = [3, -1, 3, -1]  # body part of the exam, for both images
    ce = np.mean([-logp[i, y] for i, y in enumerate(labels) if y >= 0])
    assert out["part"].item() == pytest.approx(ce, rel=1e-5)

    w, b = _np(model.contrast_head.weight), _np(model.contrast_head.bias)
    z = _np(enc.pooled) @ w.T + b
    assert out["contrastive"].item() == pytest.approx(_ntxent(z[:2], z[2:], 0.5), rel=1e-5)

    expected = self_l1 + cross_l1 + out["meta"].item() + out["part"].item() + 0.7 * out["contrastive"].item()
    assert out["loss"].item() == pytest.approx(expected, rel=1e-5)


def test_random_mask_exact_ratio_in_patches():
    model = _model()
    torch.manual_seed(0)
    mask = model.random_mask(torch.zeros(3, 1, 32, 32, 32))
    patches = mask[:, 0].reshape(3, 4, 8, 4, 8, 4, 8).permute(0, 1, 3, 5, 2, 4, 6).reshape(3, 64, 512)
    assert (patches.all(-1) | ~patches.any(-1)).all()  # whole 8³ patches
    assert (patches[..., 0].sum(1) == round(0.6 * 64)).all()
    assert not torch.equal(mask[0], mask[1])


def test_meta_loss_ignores_nan_entries():
    target = torch.tensor([[1.0, NAN, 0.5], [NAN, NAN, 2.0]])
    pred = torch.tensor([[0.0, 9.0, 1.0], [7.0, -3.0, 1.0]], requires_grad=True)
    loss = meta_l1_loss(pred, target)
    assert loss.item() == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    loss.backward()
    assert torch.equal(pred.grad[torch.isnan(target)], torch.zeros(3))
    # the predictions behind NaN targets do not matter
    assert meta_l1_loss(pred.detach() + torch.isnan(target) * 100.0, target).item() == pytest.approx(loss.item())
    # nothing known: 0, still differentiable, finite (zero) gradient
    pred2 = torch.randn(2, 3, requires_grad=True)
    none = meta_l1_loss(pred2, torch.full((2, 3), NAN))
    assert none.item() == 0.0 and none.requires_grad
    none.backward()
    assert torch.equal(pred2.grad, torch.zeros(2, 3))


def test_part_loss_ignores_unknown():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0), requires_grad=True)
    labels = torch.tensor([2, -1, 0, -1])
    loss = part_ce_loss(logits, labels)
    lg = _np(logits)
    logp = lg - np.log(np.exp(lg).sum(1, keepdims=True))
    assert loss.item() == pytest.approx((-logp[0, 2] - logp[2, 0]) / 2, rel=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, ignore_index=-1).item(), rel=1e-6)
    loss.backward()
    assert torch.equal(logits.grad[[1, 3]], torch.zeros(2, 5))
    none = part_ce_loss(logits, torch.full((4,), -1))
    assert none.item() == 0.0 and none.requires_grad


def test_cross_synthesis_takes_contrast_from_the_other_sequence():
    model = _model()
    batch = _batch()
    with torch.no_grad():
        enc = model.encode(torch.cat([batch["image"], batch["image2"]]))
    anatomy, code = enc.anatomy.clone().requires_grad_(), enc.code.clone().requires_grad_()
    out = model.cross_synthesis(anatomy, code)
    # rows :2 are image2 synthesised from image's anatomy: they depend on image2's code
    # (rows 2:) and image's anatomy (rows :2) only
    g_anat, g_code = torch.autograd.grad(out[:2].square().sum(), [anatomy, code])
    assert (g_code[2:].abs().sum(1) > 0).all() and torch.equal(g_code[:2], torch.zeros_like(g_code[:2]))
    assert (g_anat[:2].flatten(1).abs().sum(1) > 0).all() and torch.equal(g_anat[2:], torch.zeros_like(g_anat[2:]))
    # and swapping in the image's own code changes the output
    with torch.no_grad():
        assert not torch.allclose(model.decode(anatomy[:2], code[:2]), out[:2], atol=1e-4)


def test_overfits_one_batch_every_parameter_learns_and_encoder_round_trips():
    model = _model()
    batch = _batch()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    history = []
    for step in range(25):
        torch.manual_seed(5)  # the same masks every step: one fixed batch
        opt.zero_grad()
        out = model(batch)
        out["loss"].backward()
        if step == 0:
            no_grad = [n for n, p in model.named_parameters()
                       if p.grad is None or not torch.isfinite(p.grad).all() or not p.grad.any()]
            assert no_grad == []
        opt.step()
        assert all(torch.isfinite(v) for v in out.values())
        history.append({k: v.item() for k, v in out.items()})
    first, last = history[0], history[-1]
    assert last["loss"] < 0.7 * first["loss"]
    assert last["recon"] < 0.8 * first["recon"]

    sd = model.encoder_state_dict()
    assert sd and all(k.startswith("swinViT.") for k in sd)
    enc = load_prism_encoder(sd, "swin_tiny_v2")
    assert all(torch.equal(v, enc.state_dict()[k]) for k, v in sd.items())


# --- loader ---------------------------------------------------------------------------------------

def _random_swin_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=g) if v.is_floating_point()
                else torch.randint(0, 50, v.shape, generator=g, dtype=v.dtype))
            for k, v in build_encoder3d("swin_tiny_v2").state_dict().items()}


def _assert_loaded(enc, ref: dict[str, torch.Tensor]) -> None:
    got = enc.state_dict()
    assert set(got) == set(ref)
    assert all(torch.equal(got[k], v) for k, v in ref.items())


@pytest.mark.parametrize("layout", ["ddp_backbone", "state_dict", "prism_full"])
def test_loader_matches_keys_by_swinvit_suffix(tmp_path, layout):
    ref = _random_swin_state()
    if layout == "ddp_backbone":  # a DDP-wrapped model with the backbone one level down, heads beside it
        ckpt = {f"module.backbone.{k}": v for k, v in ref.items()}
        ckpt |= {"module.backbone.anatomy.0.weight": torch.zeros(3), "module.meta_head.bias": torch.zeros(3)}
    elif layout == "state_dict":
        ckpt = {"state_dict": dict(ref), "epoch": 3}
    else:  # PRISM's save_ckpt of PT_MRI_FM: the backbone under swinViT.* and again under D.swinViT.*
        sd = dict(ref) | {f"D.{k}": v.clone() for k, v in ref.items()}
        sd |= {"meta_head.weight": torch.zeros(3, 768), "D.meta_head.weight": torch.zeros(3, 768)}
        ckpt = {"epoch": 1, "state_dict": sd, "global_step": 10}
    path = tmp_path / "prism.pt"
    torch.save(ckpt, path)
    _assert_loaded(load_prism_encoder(path, "swin_tiny_v2"), ref)
    _assert_loaded(load_prism_encoder({"model": ckpt}, "swin_tiny_v2"), ref)


def test_loader_raises_on_wrong_layouts():
    ref = _random_swin_state()
    missing = {f"model.{k}": v for k, v in ref.items() if "layers4" not in k}
    with pytest.raises(ValueError, match=r"missing \['swinViT\.layers4"):
        load_prism_encoder(missing, "swin_tiny_v2")
    with pytest.raises(ValueError, match="unexpected"):
        load_prism_encoder(ref | {"swinViT.head.weight": torch.zeros(2)}, "swin_tiny_v2")
    with pytest.raises(ValueError, match="no key contains 'swinViT.'"):
        load_prism_encoder({"state_dict": {"encoder.stages.0.weight": torch.zeros(1)}}, "swin_tiny_v2")
    clash = ref | {"D.swinViT.patch_embed.proj.bias": ref["swinViT.patch_embed.proj.bias"] + 1}
    with pytest.raises(ValueError, match="two different tensors"):
        load_prism_encoder(clash, "swin_tiny_v2")
