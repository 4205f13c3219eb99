"""Multi-crop: shapes, value ranges, crop-major collate, determinism."""
import pytest
import torch

from mrifoundry.models.ssl.multicrop import IMAGENET_MEAN, IMAGENET_STD, MultiCrop, MultiCropConfig, collate_multicrop

CFG = MultiCropConfig(global_size=24, local_size=12, n_global=2, n_local=3, blur_kernel=5)


@pytest.mark.parametrize("channels", [1, 3])
def test_shapes_and_value_range(channels):
    torch.manual_seed(0)
    out = MultiCrop(CFG)(torch.rand(channels, 40, 52))
    assert len(out["global"]) == 2 and len(out["local"]) == 3
    assert all(t.shape == (3, 24, 24) for t in out["global"])
    assert all(t.shape == (3, 12, 12) for t in out["local"])
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for t in out["global"] + out["local"]:
        raw = t * std + mean  # undo the normalisation: back in [0, 1]
        assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5
        if channels == 1:  # grey replicated: the three channels carry the same intensities
            assert torch.allclose(raw[0], raw[1], atol=1e-5) and torch.allclose(raw[0], raw[2], atol=1e-5)


def test_deterministic_under_manual_seed():
    img = torch.rand(1, 32, 32)
    mc = MultiCrop(CFG)
    torch.manual_seed(7)
    a = mc(img)
    torch.manual_seed(7)
    b = mc(img)
    torch.manual_seed(8)
    c = mc(img)
    assert all(torch.equal(x, y) for x, y in zip(a["global"] + a["local"], b["global"] + b["local"]))
    assert not all(torch.equal(x, y) for x, y in zip(a["global"], c["global"]))


def test_rejects_bad_input():
    mc = MultiCrop(CFG)
    with pytest.raises(ValueError):
        mc(torch.rand(2, 16, 16))
    with pytest.raises(ValueError):
        mc(torch.zeros(1, 16, 16, dtype=torch.uint8))


def test_collate_is_crop_major():
    n_samples, n_global, n_local = 3, 2, 4
    # sample b, crop c holds the constant 10·c + b, so every row says where it came from
    samples = [{"global": [torch.full((3, 4, 4), 10.0 * c + b) for c in range(n_global)],
                "local": [torch.full((3, 2, 2), 10.0 * c + b) for c in range(n_local)]} for b in range(n_samples)]
    out = collate_multicrop(samples)
    assert out["global"].shape == (n_global * n_samples, 3, 4, 4)
    assert out["local"].shape == (n_local * n_samples, 3, 2, 2)
    for key, n_crops in (("global", n_global), ("local", n_local)):
        for c, chunk in enumerate(out[key].chunk(n_crops)):  # what the DINO loss does
            assert chunk[:, 0, 0, 0].tolist() == [10.0 * c + b for b in range(n_samples)]


def test_collate_of_real_crops_and_no_locals():
    torch.manual_seed(0)
    mc = MultiCrop(MultiCropConfig(global_size=16, local_size=8, n_local=0, blur_kernel=3))
    out = collate_multicrop([mc(torch.rand(1, 20, 20)) for _ in range(2)])
    assert out["global"].shape == (4, 3, 16, 16) and out["local"].numel() == 0
