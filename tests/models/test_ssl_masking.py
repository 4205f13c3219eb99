"""Block masking: exact counts, ratio ranges, masked fraction, reproducibility."""
import numpy as np
import pytest
import torch

from mrifoundry.models.ssl.masking import MaskingGenerator, mask_weights, sample_masks


@pytest.mark.parametrize("grid", [(4, 4), (14, 14), (3, 7), (1, 5)])
def test_generator_masks_exact_count(grid):
    gen = MaskingGenerator(grid, max_num_patches=int(0.5 * grid[0] * grid[1]))
    rng = np.random.default_rng(0)
    n = grid[0] * grid[1]
    for count in range(0, n + 1, max(1, n // 12)):
        mask = gen(count, rng=rng)
        assert mask.shape == grid and mask.dtype == bool
        assert mask.sum() == count


def test_generator_makes_blocks_and_is_reproducible():
    gen = MaskingGenerator((14, 14), max_num_patches=98)
    a = gen(40, rng=np.random.default_rng(5))
    b = gen(40, rng=np.random.default_rng(5))
    assert np.array_equal(a, b)
    # block-wise: most masked patches have a masked 4-neighbour (random masking of 40/196 would not)
    padded = np.pad(a, 1)
    neigh = padded[:-2, 1:-1] | padded[2:, 1:-1] | padded[1:-1, :-2] | padded[1:-1, 2:]
    assert (neigh & a).sum() >= 0.8 * a.sum()
    with pytest.raises(ValueError):
        gen(197)


def test_generator_attribute_rng():
    a = MaskingGenerator((8, 8), rng=np.random.default_rng(1))(20)
    b = MaskingGenerator((8, 8), rng=np.random.default_rng(1))(20)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("batch,prob", [(8, 0.5), (5, 0.5), (10, 0.3), (4, 1.0), (4, 0.0)])
def test_sample_masks_fraction_and_ratios(batch, prob):
    grid, lo, hi = (8, 8), 0.1, 0.5
    masks = sample_masks(batch, grid, ratio_range=(lo, hi), mask_probability=prob, rng=0)
    assert masks.shape == (batch, 64) and masks.dtype == torch.bool
    counts = masks.sum(1).numpy()
    n_masked = {(8, 0.5): 4, (5, 0.5): 3, (10, 0.3): 3, (4, 1.0): 4, (4, 0.0): 0}[(batch, prob)]  # half up
    assert (counts > 0).sum() == n_masked
    # the i-th masked sample's ratio is drawn in the i-th of n equal bins of the range
    edges = np.linspace(lo, hi, n_masked + 1)
    got = np.sort(counts[counts > 0])
    for i, c in enumerate(got):
        assert max(1, int(64 * edges[i])) <= c <= int(64 * edges[i + 1])


def test_sample_masks_reproducible_and_shuffled():
    a = sample_masks(16, (6, 6), rng=np.random.default_rng(3))
    b = sample_masks(16, (6, 6), rng=np.random.default_rng(3))
    c = sample_masks(16, (6, 6), rng=np.random.default_rng(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # shuffled: the masked rows are not always the first ones
    firsts = [sample_masks(8, (6, 6), rng=s)[:4].any(1).all().item() for s in range(20)]
    assert not all(firsts)


def test_sample_masks_accepts_generator_class_and_instance():
    a = sample_masks(6, (5, 5), generator=MaskingGenerator, rng=2)
    b = sample_masks(6, (5, 5), generator=MaskingGenerator((5, 5), max_num_patches=12), rng=2)
    assert torch.equal(a, b)


def test_mask_weights_sum_to_one_per_masked_image():
    masks = sample_masks(10, (6, 6), rng=1)
    w = mask_weights(masks)
    assert w.shape == (int(masks.sum()),)
    assert w.sum().item() == pytest.approx(int(masks.any(1).sum()))
