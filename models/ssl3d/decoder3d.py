"""A light reconstruction decoder and patch masks for 3D masked image modelling.

:class:`LightDecoder3d` is Triad's ``SimMIMSkip_light`` decoder made generic: from the
deepest feature map only (no skips), ``n_up`` × (Conv3d 3³ → InstanceNorm3d → LeakyReLU →
trilinear ×2), then a 1³ conv to the output channels. :func:`random_patch_mask` is Triad's
``MaskGenerator`` on torch's RNG: a fixed number of masked cubes per sample.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LightDecoder3d", "random_patch_mask"]


class _UpBlock(nn.Module):
    """Conv 3³ → InstanceNorm → LeakyReLU → trilinear ×2."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, kernel_size=3, padding=1)
        # Triad's decoder uses nn.InstanceNorm3d's defaults: no affine parameters
        self.norm = nn.InstanceNorm3d(c_out)
        self.act = nn.LeakyReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        # A 1-voxel map (a 32³ crop through a /32 encoder) has no instance statistics: torch
        # refuses it, and its normalised value would be 0 whatever the input. Skip the norm there.
        if x.shape[2:].numel() > 1:
            x = self.norm(x)
        x = self.act(x)
        return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


class LightDecoder3d(nn.Module):
    """Deepest feature map [B, in_channels, r, r, r] → reconstruction [B, out_channels, r·2ⁿ, …].

    A 1³ conv first maps ``in_channels`` to ``width`` (identity when equal; Triad's
    ``z_adapter``). Stage k (1…n_up) has ``max(width // 2**min(k, 4), 1)`` channels: halving
    four times, then constant, which is Triad's 768 → 384-192-96-48-48 (Swin-B) and
    24 → 12-6-3-1-1 (plain conv U-Net) for ``n_up = 5``.

    Args:
        in_channels: channels of the feature map.
        out_channels: channels of the reconstruction (the image's).
        n_up: ×2 upsamplings (log2 of the encoder's total stride).
        width: channels after the input adapter.
    """

    def __init__(self, in_channels: int, out_channels: int, n_up: int, width: int) -> None:
        super().__init__()
        if n_up < 1 or width < 1 or in_channels < 1 or out_channels < 1:
            raise ValueError(f"need positive sizes, got in={in_channels} out={out_channels} n_up={n_up} width={width}")
        self.n_up = n_up
        self.adapter = nn.Identity() if in_channels == width else nn.Conv3d(in_channels, width, kernel_size=1)
        chans = [width] + [max(width // 2 ** min(k, 4), 1) for k in range(1, n_up + 1)]
        self.blocks = nn.Sequential(*[_UpBlock(chans[k], chans[k + 1]) for k in range(n_up)])
        self.head = nn.Conv3d(chans[-1], out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.adapter(x)))


def random_patch_mask(shape_b_r: tuple[int, int], mask_patch: int = 16, ratio: float = 0.6,
                      generator: torch.Generator | None = None,
                      device: torch.device | str | None = None) -> torch.Tensor:
    """Bool voxel mask [B, 1, R, R, R]: True = masked, in aligned ``mask_patch``³ cubes.

    Each sample masks exactly ``ceil(ratio · n)`` of its ``n = (R / mask_patch)³`` cubes, drawn
    uniformly without replacement (Triad's ``MaskGenerator`` uses ``ceil``; 130 of 216 cubes at
    its 96³ / 16 / 0.6). Draws from ``generator``, else torch's global RNG of ``device``.

    Raises:
        ValueError: ``R`` not a multiple of ``mask_patch``, or ``ratio`` outside [0, 1].
    """
    b, r = shape_b_r
    if mask_patch < 1 or r % mask_patch:
        raise ValueError(f"crop size {r} is not a multiple of mask_patch {mask_patch}")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"mask ratio must be in [0, 1], got {ratio}")
    g = r // mask_patch
    n = g ** 3
    k = min(math.ceil(ratio * n - 1e-9), n)  # the tolerance keeps 0.5 · 64 at 32, not 33 from float noise
    scores = torch.rand(b, n, generator=generator, device=device)
    grid = torch.zeros(b, n, dtype=torch.bool, device=scores.device)
    grid.scatter_(1, scores.argsort(dim=1)[:, :k], True)
    grid = grid.view(b, 1, g, 1, g, 1, g, 1).expand(b, 1, g, mask_patch, g, mask_patch, g, mask_patch)
    return grid.reshape(b, 1, r, r, r)
