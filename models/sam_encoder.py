"""SAM's image encoder (the real ``segment_anything`` module), configured by a dataclass."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from segment_anything.modeling import ImageEncoderViT
from torch import nn

__all__ = ["SamEncoderConfig", "SAM_CONFIGS", "build_sam_encoder", "sam_blocks_forward"]


@dataclass(frozen=True)
class SamEncoderConfig:
    """Shape of SAM's ``ImageEncoderViT``; ``img_size`` fixes the token grid and neck input."""

    img_size: int = 1024
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    out_chans: int = 256
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] = (2, 5, 8, 11)
    use_rel_pos: bool = True

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


SAM_CONFIGS: dict[str, SamEncoderConfig] = {
    "sam_vit_b": SamEncoderConfig(),
    # MRI-CORE's SAM fork builds ViT-B without relative positions
    "mri_core_sam": SamEncoderConfig(use_rel_pos=False),
    "sam_tiny": SamEncoderConfig(img_size=64, embed_dim=64, depth=2, num_heads=2, out_chans=32,
                                 window_size=2, global_attn_indexes=(1,)),
}


def build_sam_encoder(cfg: SamEncoderConfig | None = None) -> ImageEncoderViT:
    """A randomly initialised ``ImageEncoderViT`` (LayerNorm eps 1e-6, as ``build_sam``)."""
    cfg = cfg or SamEncoderConfig()
    return ImageEncoderViT(
        img_size=cfg.img_size, patch_size=cfg.patch_size, in_chans=3, embed_dim=cfg.embed_dim,
        depth=cfg.depth, num_heads=cfg.num_heads, mlp_ratio=4.0, out_chans=cfg.out_chans,
        qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6), act_layer=nn.GELU,
        use_abs_pos=True, use_rel_pos=cfg.use_rel_pos, rel_pos_zero_init=True,
        window_size=cfg.window_size, global_attn_indexes=tuple(cfg.global_attn_indexes),
    )


def sam_blocks_forward(encoder: ImageEncoderViT, x: torch.Tensor) -> torch.Tensor:
    """The encoder's last block output, before the neck: ``[B, D, h, w]``.

    Mirrors ``ImageEncoderViT.forward`` minus the neck (SAM has no final norm).
    """
    x = encoder.patch_embed(x)
    if encoder.pos_embed is not None:
        x = x + encoder.pos_embed
    for blk in encoder.blocks:
        x = blk(x)
    return x.permute(0, 3, 1, 2)
