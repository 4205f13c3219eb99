"""3D encoders of the volume recipes: MONAI's SwinTransformer and nnU-Net's plain conv encoder.

Both come from the libraries their papers used, so published weights load by key:

- :func:`build_swin` — ``monai.networks.nets.swin_unetr.SwinTransformer`` (Triad's Swin-B v2,
  BrainSegFounder's SwinUNETR backbone, PRISM's Swin v2). Held as an attribute named
  ``swinViT`` so state-dict keys read ``…swinViT.*`` as in every published layout.
- :func:`build_plainconv` — ``dynamic_network_architectures``' ``PlainConvEncoder`` (Triad's
  ``get_Plain_nnUNet``: 6 stages 32-64-128-256-320-320, 3³ kernels, instance norm, leaky ReLU,
  conv bias), held as ``encoder`` so keys read ``encoder.stages.*``.

:class:`Encoder3d` gives both one interface: ``forward(x) → [feature maps, shallow → deep]`` and
``pooled(x) → [B, sum(channels)]`` (global average of every scale, concatenated: Triad's
``forward_encs``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["PLAINCONV_CONFIGS", "SWIN_CONFIGS", "Encoder3d", "PlainConvConfig", "SwinConfig", "build_encoder3d",
           "build_plainconv", "build_swin", "pool_features"]


@dataclass(frozen=True)
class SwinConfig:
    in_channels: int = 1
    embed_dim: int = 48
    depths: tuple[int, ...] = (2, 2, 2, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    patch_size: int = 2
    use_v2: bool = True
    drop_path_rate: float = 0.0

    @property
    def channels(self) -> list[int]:
        """Channels of the 5 outputs (patch embedding, then one per stage)."""
        return [self.embed_dim * 2 ** i for i in range(len(self.depths) + 1)]


@dataclass(frozen=True)
class PlainConvConfig:
    in_channels: int = 1
    features: tuple[int, ...] = (32, 64, 128, 256, 320, 320)
    strides: tuple[int, ...] = (1, 2, 2, 2, 2, 2)
    n_conv_per_stage: int = 2

    @property
    def channels(self) -> list[int]:
        return list(self.features)


SWIN_CONFIGS: dict[str, SwinConfig] = {
    # Triad Swin-B / PRISM scale B: embed 48, depths 2-2-2-2, heads 3-6-12-24, window 7, patch 2, v2
    "swin_b_v2": SwinConfig(),
    # BrainSegFounder / SwinUNETR pretraining: the same sizes, v1 blocks
    "swin_b": SwinConfig(use_v2=False),
    # tests and the demo: same code, a few thousand parameters
    "swin_tiny_v2": SwinConfig(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4),
    "swin_tiny": SwinConfig(embed_dim=12, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2), window_size=4, use_v2=False),
}

PLAINCONV_CONFIGS: dict[str, PlainConvConfig] = {
    "triad_unet": PlainConvConfig(),
    # 5 stages (/16): instance norm needs more than one voxel in the last stage of a 32³ crop
    "unet_tiny": PlainConvConfig(features=(4, 8, 16, 16, 16), strides=(1, 2, 2, 2, 2)),
}


def build_swin(cfg: SwinConfig) -> nn.Module:
    from monai.networks.nets.swin_unetr import SwinTransformer
    return SwinTransformer(in_chans=cfg.in_channels, embed_dim=cfg.embed_dim, window_size=(cfg.window_size,) * 3,
                           patch_size=(cfg.patch_size,) * 3, depths=tuple(cfg.depths), num_heads=tuple(cfg.num_heads),
                           drop_path_rate=cfg.drop_path_rate, spatial_dims=3, use_v2=cfg.use_v2)


def build_plainconv(cfg: PlainConvConfig) -> nn.Module:
    from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder
    n = len(cfg.features)
    return PlainConvEncoder(cfg.in_channels, n, list(cfg.features), nn.Conv3d, 3, list(cfg.strides),
                            cfg.n_conv_per_stage, conv_bias=True, norm_op=nn.InstanceNorm3d,
                            norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                            nonlin_kwargs={"inplace": True}, return_skips=True)


class Encoder3d(nn.Module):
    """A Swin or plain-conv 3D encoder with one interface.

    ``forward(x)`` → feature maps shallow → deep (Swin: 5 maps at /2 … /32, layer-normed as
    MONAI's ``normalize=True``; plain conv: one per stage). ``x`` must be divisible by 32 per
    side (96³ in the recipes, 32³ in tests); a plain-conv encoder needs more than one voxel
    in its last stage (≥ 64³ for Triad's 6 stages).
    """

    def __init__(self, kind: str, cfg: SwinConfig | PlainConvConfig):
        super().__init__()
        self.kind, self.cfg = kind, cfg
        if kind == "swin":
            self.swinViT = build_swin(cfg)
        elif kind == "plainconv":
            self.encoder = build_plainconv(cfg)
        else:
            raise ValueError(f"unknown encoder kind {kind!r} (swin | plainconv)")

    @property
    def channels(self) -> list[int]:
        return self.cfg.channels

    @property
    def pooled_dim(self) -> int:
        return sum(self.channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.kind == "swin":
            return list(self.swinViT(x, normalize=True))
        return list(self.encoder(x))

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return pool_features(self(x))


def pool_features(features: list[torch.Tensor]) -> torch.Tensor:
    """Global average of every feature map, concatenated → [B, sum(C)] (Triad's ``forward_encs``)."""
    return torch.cat([f.mean(dim=tuple(range(2, f.ndim))) for f in features], dim=1)


def build_encoder3d(name: str, in_channels: int = 1, **overrides) -> Encoder3d:
    """By configuration name: a key of :data:`SWIN_CONFIGS` or :data:`PLAINCONV_CONFIGS`."""
    if name in SWIN_CONFIGS:
        return Encoder3d("swin", dataclasses.replace(SWIN_CONFIGS[name], in_channels=in_channels, **overrides))
    if name in PLAINCONV_CONFIGS:
        return Encoder3d("plainconv", dataclasses.replace(PLAINCONV_CONFIGS[name], in_channels=in_channels,
                                                          **overrides))
    raise KeyError(f"unknown 3D encoder {name!r}; known: {', '.join([*SWIN_CONFIGS, *PLAINCONV_CONFIGS])}")
