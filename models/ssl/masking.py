"""Block-wise patch masking for iBOT (BEiT / DINOv2 style) and the per-batch mask sampler.

All randomness comes from an explicit ``np.random.Generator``: the same seed gives the same
masks, and each rank / worker derives its own generator (never the global RNG).
"""
from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["MaskingGenerator", "mask_weights", "sample_masks"]


class MaskingGenerator:
    """Draws masks made of random rectangles of patches.

    Args:
        input_size: patch grid ``(h, w)``.
        max_num_patches: largest block area (default: the whole grid; DINOv2 uses 0.5·N).
        min_num_patches: smallest block area.
        min_aspect: smallest block aspect ratio h/w; the largest defaults to ``1/min_aspect``.
        max_aspect: largest aspect ratio.
        rng: generator used when a call passes none (default: freshly seeded from the OS).
    """

    _TRIES_PER_BLOCK = 10

    def __init__(self, input_size: tuple[int, int], max_num_patches: int | None = None, min_num_patches: int = 4,
                 min_aspect: float = 0.3, max_aspect: float | None = None,
                 rng: np.random.Generator | None = None) -> None:
        self.height, self.width = (int(v) for v in input_size)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.num_patches = self.height * self.width
        self.min_num_patches = min_num_patches
        self.max_num_patches = self.num_patches if max_num_patches is None else max_num_patches
        max_aspect = max_aspect or 1.0 / min_aspect
        self.log_aspect_ratio = (math.log(min_aspect), math.log(max_aspect))
        self.rng = rng if rng is not None else np.random.default_rng()

    def __repr__(self) -> str:
        return (f"MaskingGenerator(input_size=({self.height}, {self.width}), min={self.min_num_patches}, "
                f"max={self.max_num_patches}, log_aspect={self.log_aspect_ratio})")

    def _add_block(self, mask: np.ndarray, max_new: int, rng: np.random.Generator) -> int:
        """Mask one random rectangle adding 1..max_new new patches; returns how many it added."""
        for _ in range(self._TRIES_PER_BLOCK):
            # a remainder below min_num_patches: draw between the two (as random.uniform does)
            area = rng.uniform(min(self.min_num_patches, max_new), max(self.min_num_patches, max_new))
            aspect = math.exp(rng.uniform(*self.log_aspect_ratio))
            h = int(round(math.sqrt(area * aspect)))
            w = int(round(math.sqrt(area / aspect)))
            if not (0 < h < self.height and 0 < w < self.width):
                continue
            top = int(rng.integers(0, self.height - h + 1))
            left = int(rng.integers(0, self.width - w + 1))
            block = mask[top:top + h, left:left + w]
            new = int(block.size - block.sum())
            # never overshoot the target: the exact count is the contract
            if 0 < new <= max_new:
                block[...] = True
                return new
        return 0

    def __call__(self, num_masking_patches: int = 0, rng: np.random.Generator | None = None) -> np.ndarray:
        """A bool ``[h, w]`` mask with exactly ``num_masking_patches`` True.

        Blocks are added until the count is reached; when no block fits the remainder (small
        grids, a remainder below ``min_num_patches``), random single patches top it up.

        Raises:
            ValueError: when asking for more patches than the grid has.
        """
        rng = self.rng if rng is None else rng
        if not 0 <= num_masking_patches <= self.num_patches:
            raise ValueError(f"cannot mask {num_masking_patches} of {self.num_patches} patches")
        mask = np.zeros((self.height, self.width), dtype=bool)
        count = 0
        while count < num_masking_patches:
            added = self._add_block(mask, min(num_masking_patches - count, self.max_num_patches), rng)
            if added == 0:
                break
            count += added
        if count < num_masking_patches:
            free = np.flatnonzero(~mask)
            mask.flat[rng.choice(free, size=num_masking_patches - count, replace=False)] = True
        return mask


def sample_masks(batch_size: int, grid: tuple[int, int], ratio_range: tuple[float, float] = (0.1, 0.5),
                 mask_probability: float = 0.5, generator: MaskingGenerator | type[MaskingGenerator] | None = None,
                 rng: np.random.Generator | int | None = None) -> torch.Tensor:
    """Masks for one batch of global crops, as DINOv2's collate draws them.

    n = ``round(mask_probability · B)`` samples (half up) are masked: the i-th takes a ratio
    drawn uniformly in the i-th of n equal bins of ``ratio_range`` (so ratios spread evenly
    over the range) and masks ``max(1, int(N · ratio))`` patches; the other samples are
    unmasked. The rows are shuffled.

    Args:
        batch_size: B.
        grid: patch grid ``(h, w)``; N = h·w.
        ratio_range: per-sample mask ratio range.
        mask_probability: fraction of the batch that is masked.
        generator: a ``MaskingGenerator`` (or the class, built for ``grid``); default:
            DINOv2's, blocks of at most 0.5·N patches.
        rng: generator or seed for every random draw here (block placement included).

    Returns:
        Bool tensor ``[B, N]``, row-major patch order.
    """
    h, w = grid
    n_patches = h * w
    lo, hi = ratio_range
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"ratio_range must satisfy 0 <= lo <= hi <= 1, got {ratio_range}")
    if not 0.0 <= mask_probability <= 1.0:
        raise ValueError(f"mask_probability must be in [0, 1], got {mask_probability}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    if generator is None or isinstance(generator, type):
        cls = generator or MaskingGenerator
        generator = cls((h, w), max_num_patches=int(0.5 * n_patches))
    n_masked = math.floor(mask_probability * batch_size + 0.5)  # half up, not Python's half-to-even
    edges = np.linspace(lo, hi, n_masked + 1)
    masks = np.zeros((batch_size, n_patches), dtype=bool)
    for i in range(n_masked):
        ratio = rng.uniform(edges[i], edges[i + 1])
        count = min(n_patches, max(1, int(n_patches * ratio)))
        masks[i] = generator(count, rng=rng).reshape(-1)
    return torch.from_numpy(masks[rng.permutation(batch_size)])


def mask_weights(masks: torch.Tensor) -> torch.Tensor:
    """iBOT weights of the masked patches of ``masks [B, N]``: ``1 / (masked in its image)``.

    Returned in the order of ``masks[masks]`` (row-major), the order in which the trainer
    gathers masked tokens.
    """
    per_image = masks.sum(-1, keepdim=True).clamp(min=1).float()
    return (1.0 / per_image).expand_as(masks)[masks]
