"""DINO / iBOT / KoLeo losses against independent NumPy / SciPy computations."""
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from mrifoundry.models.ssl.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from mrifoundry.models.ssl.masking import mask_weights


def _np_log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def _np_softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize("n_global,n_local", [(2, 0), (2, 3), (1, 2), (3, 1)])
def test_dino_loss_matches_numpy_double_loop(n_global, n_local):
    rng = np.random.default_rng(0)
    b, k, temp = 3, 5, 0.1
    student = [rng.normal(size=(b, k)) for _ in range(n_global + n_local)]
    teacher = [_np_softmax(rng.normal(size=(b, k))) for _ in range(n_global)]

    expected, terms = 0.0, 0
    for i, s in enumerate(student):
        for j, t in enumerate(teacher):
            if i == j:
                continue
            ce = 0.0
            for r in range(b):
                ls = _np_log_softmax(s[r] / temp)
                ce += -sum(t[r, c] * ls[c] for c in range(k))
            expected += ce / b
            terms += 1
    expected /= terms
    assert terms == n_global * (n_global - 1) + n_local * n_global

    loss = DINOLoss(k)([torch.tensor(s, dtype=torch.float32) for s in student],
                       [torch.tensor(t, dtype=torch.float32) for t in teacher], n_global=n_global)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_dino_loss_rejects_bad_crop_counts():
    loss = DINOLoss(4)
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError):
        loss([x, x], [x], n_global=2)
    with pytest.raises(ValueError):
        loss([x], [x], n_global=1)


def test_teacher_centering_and_center_ema():
    rng = np.random.default_rng(1)
    k, temp, m = 6, 0.04, 0.9
    loss = DINOLoss(k, center_momentum=m)
    assert "center" in dict(loss.named_buffers())
    assert "center" in loss.state_dict()

    center = np.zeros(k)
    for _ in range(3):
        logits = rng.normal(size=(8, k))
        probs = loss.softmax_center_teacher(torch.tensor(logits, dtype=torch.float32), temp).numpy()
        np.testing.assert_allclose(probs, _np_softmax((logits - center) / temp), rtol=1e-4, atol=1e-6)
        loss.update_center(torch.tensor(logits, dtype=torch.float32))
        center = m * center + (1 - m) * logits.mean(axis=0)
        np.testing.assert_allclose(loss.center.numpy()[0], center, rtol=1e-5, atol=1e-6)


def test_update_center_accepts_list_and_skips_empty():
    loss = iBOTPatchLoss(4)
    a, b = torch.ones(2, 4), 3 * torch.ones(1, 4)
    loss.update_center([a, b])
    np.testing.assert_allclose(loss.center.numpy()[0], 0.1 * np.full(4, 5 / 3), rtol=1e-6)
    before = loss.center.clone()
    loss.update_center(torch.zeros(0, 4))
    assert torch.equal(loss.center, before)


def test_ibot_weighting_matches_numpy():
    rng = np.random.default_rng(2)
    b, n, k, temp = 4, 6, 5, 0.1
    masks = np.zeros((b, n), dtype=bool)
    masks[0, [0, 3]] = True          # 2 masked patches
    masks[2, [1, 2, 4, 5]] = True    # 4 masked patches; images 1 and 3 unmasked
    m = int(masks.sum())
    s = rng.normal(size=(m, k))
    t = _np_softmax(rng.normal(size=(m, k)))

    # explicit per image: mean cross-entropy over its masked patches, summed, / B images
    expected, row = 0.0, 0
    for img in range(b):
        cnt = masks[img].sum()
        for _ in range(cnt):
            expected += -(t[row] * _np_log_softmax(s[row] / temp)).sum() / cnt
            row += 1
    expected /= b

    w = mask_weights(torch.tensor(masks))
    np.testing.assert_allclose(w.numpy(), [0.5, 0.5, 0.25, 0.25, 0.25, 0.25])
    loss = iBOTPatchLoss(k).forward_masked(torch.tensor(s, dtype=torch.float32),
                                           torch.tensor(t, dtype=torch.float32), w, n_masked_images=b)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_ibot_no_masked_patches_is_zero_with_grad():
    s = torch.zeros(0, 3, requires_grad=True)
    for n_images in (2, 0):
        loss = iBOTPatchLoss(3).forward_masked(s, torch.zeros(0, 3), torch.zeros(0), n_masked_images=n_images)
        loss.backward()
        assert loss.item() == 0.0


def test_koleo_matches_scipy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(7, 5))
    z = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = cdist(z, z)
    np.fill_diagonal(d, np.inf)
    expected = -np.log(d.min(axis=1) + 1e-8).mean()
    assert KoLeoLoss()(torch.tensor(x, dtype=torch.float32)).item() == pytest.approx(expected, rel=1e-5)


def test_koleo_duplicates_finite_gradient_and_spreading_lowers_loss():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]], requires_grad=True)
    loss = KoLeoLoss()(x)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()
    spread = KoLeoLoss()(torch.tensor([[1.0, 0.0], [-0.5, 0.87], [-0.5, -0.87]]))
    assert spread < loss
    with pytest.raises(ValueError):
        KoLeoLoss()(torch.zeros(1, 4))


def test_update_center_all_reduce_path(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        loss = DINOLoss(3, center_momentum=0.5)
        loss.update_center(torch.tensor([[2.0, 4.0, 6.0]]))
        np.testing.assert_allclose(loss.center.numpy()[0], [1.0, 2.0, 3.0])
    finally:
        dist.destroy_process_group()
