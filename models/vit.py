"""A compact DINOv2-style Vision Transformer.

State-dict keys follow DINOv2's unchunked naming (``blocks.{i}.attn.qkv.weight`` …), so
official DINOv2 backbones, MRI-CORE teacher backbones (after :func:`unchunk_block_keys`)
and our own pretraining checkpoints all load strictly. Attention uses
``scaled_dot_product_attention`` (flash / memory-efficient kernels on GPU, bf16-safe).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ViTConfig", "VIT_CONFIGS", "DinoVisionTransformer", "Block", "resize_pos_grid",
    "chunk_block_keys", "unchunk_block_keys",
]


@dataclass(frozen=True)
class ViTConfig:
    """Shape of a :class:`DinoVisionTransformer`; ``layerscale=None`` means no ls1/ls2."""

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layerscale: float | None = None
    drop_path_rate: float = 0.0

    @property
    def grid(self) -> int:
        return self.img_size // self.patch_size


VIT_CONFIGS: dict[str, ViTConfig] = {
    # MRI-CORE / our pretraining: ViT-B/16 at 224, no layerscale
    "vit_b16": ViTConfig(),
    # official DINOv2 ViT-B/14 (dinov2_vitb14): 518 px = 37x37 tokens, layerscale 1e-5
    "vit_b14": ViTConfig(img_size=518, patch_size=14, layerscale=1e-5),
    "vit_tiny": ViTConfig(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=2),
}

# DINOv2 interpolates with scale_factor=(n + 0.1) / M rather than size=n: the output has
# n samples but the sampling positions differ slightly; kept so official weights give
# DINOv2's own features at other resolutions
_INTERPOLATE_OFFSET = 0.1


def resize_pos_grid(pos: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic resize of a channels-last position grid ``[1, h, w, D]`` to ``size``.

    Computed in float32 (CPU bicubic has no half kernels) and cast back; returns a copy
    (never the input) even when the size already matches.
    """
    if tuple(pos.shape[1:3]) == tuple(size):
        return pos.detach().clone()
    out = F.interpolate(pos.detach().float().permute(0, 3, 1, 2), size=size, mode="bicubic",
                        align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos.dtype).contiguous()


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # [B, N, D]


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embed_dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        # same [3, heads, head_dim] split of qkv as DINOv2 and SAM, so weights transfer as is
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads) \
            .permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class LayerScale(nn.Module):
    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Block(nn.Module):
    """Pre-norm transformer block; works on any token count (with or without cls)."""

    def __init__(self, cfg: ViTConfig, drop_path: float = 0.0) -> None:
        super().__init__()
        d = cfg.embed_dim
        self.norm1 = nn.LayerNorm(d, eps=1e-6)
        self.attn = Attention(d, cfg.num_heads, cfg.qkv_bias)
        self.ls1 = LayerScale(d, cfg.layerscale) if cfg.layerscale else nn.Identity()
        self.norm2 = nn.LayerNorm(d, eps=1e-6)
        self.mlp = Mlp(d, int(d * cfg.mlp_ratio))
        self.ls2 = LayerScale(d, cfg.layerscale) if cfg.layerscale else nn.Identity()
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class DinoVisionTransformer(nn.Module):
    """DINOv2-style ViT with a cls token, iBOT mask token and interpolated positions."""

    def __init__(self, cfg: ViTConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or ViTConfig()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.embed_dim = cfg.embed_dim
        d = cfg.embed_dim
        self.patch_embed = PatchEmbed(cfg.patch_size, cfg.in_chans, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid ** 2, d))
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        rates = [cfg.drop_path_rate] * cfg.depth  # DINOv2 uses a uniform rate
        self.blocks = nn.ModuleList(Block(cfg, r) for r in rates)
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        nn.init.zeros_(self.mask_token)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def interpolate_pos_encoding(self, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
        """Position embedding ``[1, 1+h*w, D]`` for an ``h x w`` token grid (cls slot kept)."""
        pos = self.pos_embed
        n = pos.shape[1] - 1
        m = math.isqrt(n)
        if m * m != n:
            raise ValueError(f"pos_embed holds {n} patch positions, not a square grid")
        if (h, w) == (m, m):
            return pos.to(dtype)
        patch = pos[:, 1:].float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
        scale = ((h + _INTERPOLATE_OFFSET) / m, (w + _INTERPOLATE_OFFSET) / m)
        patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", align_corners=False)
        if tuple(patch.shape[-2:]) != (h, w):
            raise RuntimeError(f"pos_embed interpolation gave {tuple(patch.shape[-2:])}, not {(h, w)}")
        patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, -1)
        return torch.cat([pos[:, :1].float(), patch], dim=1).to(dtype)

    def prepare_tokens(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens (mask_token where ``masks``), cls prepended, positions added."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        x = self.patch_embed(x)
        if masks is not None:
            # iBOT: the student sees the learned mask token instead of the masked patches
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1).to(x.dtype), x], dim=1)
        return x + self.interpolate_pos_encoding(h, w, x.dtype)

    def forward_features(self, x: torch.Tensor, masks: torch.Tensor | None = None) -> dict:
        """Run the backbone.

        Args:
            x: images ``[B, C, H, W]``; H and W are cropped down to multiples of the patch.
            masks: optional bool ``[B, N]``; True patches are replaced by ``mask_token``.

        Returns:
            ``x_norm_clstoken [B,D]``, ``x_norm_patchtokens [B,N,D]``, ``x_prenorm
            [B,1+N,D]`` and ``masks`` (as given).
        """
        x = self.prepare_tokens(x, masks)
        for blk in self.blocks:
            x = blk(x)
        xn = self.norm(x)
        return {"x_norm_clstoken": xn[:, 0], "x_norm_patchtokens": xn[:, 1:],
                "x_prenorm": x, "masks": masks}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normed cls token ``[B, D]``."""
        return self.forward_features(x)["x_norm_clstoken"]

    def patch_grid(self, x: torch.Tensor) -> torch.Tensor:
        """Normed patch tokens as a feature map ``[B, D, h, w]``."""
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        t = self.forward_features(x)["x_norm_patchtokens"]
        return t.transpose(1, 2).reshape(t.shape[0], -1, h, w)


# ---------------------------------------------------------------- FSDP chunked block keys

_PLAIN = re.compile(r"^((?:.*\.)?)blocks\.(\d+)\.(.+)$")
_CHUNKED = re.compile(r"^((?:.*\.)?)blocks\.(\d+)\.(\d+)\.(.+)$")


def chunk_block_keys(sd: dict, n_chunks: int = 4, *, prefix: str | None = None) -> dict:
    """``blocks.{i}.*`` → DINOv2's FSDP layout ``blocks.{chunk}.{i}.*``.

    DINOv2 splits ``depth`` blocks into chunks of ``depth // n_chunks`` and pads each chunk
    with Identity modules, so the inner index stays the GLOBAL block index (ViT-B, 4
    chunks: block 4 → ``blocks.1.4``). With fewer blocks than chunks (tiny test models;
    DINOv2 itself would fail) each block gets its own chunk. ``n_chunks=0`` leaves keys
    unchunked (DINOv2's ``block_chunks=0``). ``prefix`` (e.g. ``"backbone."``) limits the
    change to one module; None chunks every ``blocks`` group found, each with its own depth.

    Raises:
        ValueError: keys already chunked.
    """
    if n_chunks < 0:
        raise ValueError("n_chunks must be >= 0")
    depth: dict[str, int] = {}
    for k in sd:
        if _CHUNKED.match(k) and (prefix is None or k.startswith(prefix + "blocks.")):
            raise ValueError(f"key {k!r} is already chunked")
        m = _PLAIN.match(k)
        if m and (prefix is None or m.group(1) == prefix):
            depth[m.group(1)] = max(depth.get(m.group(1), 0), int(m.group(2)) + 1)
    if n_chunks == 0:
        return dict(sd)
    out = {}
    for k, v in sd.items():
        m = _PLAIN.match(k)
        if m and m.group(1) in depth:
            i = int(m.group(2))
            size = max(1, depth[m.group(1)] // n_chunks)
            k = f"{m.group(1)}blocks.{i // size}.{i}.{m.group(3)}"
        out[k] = v
    return out


def unchunk_block_keys(sd: dict, *, prefix: str | None = None) -> dict:
    """``blocks.{chunk}.{i}.*`` → ``blocks.{i}.*`` (inverse of :func:`chunk_block_keys`).

    Unchunked keys pass through, so it is safe on either layout. ``prefix`` as in
    :func:`chunk_block_keys`.
    """
    out = {}
    for k, v in sd.items():
        m = _CHUNKED.match(k)
        if m and (prefix is None or m.group(1) == prefix):
            k = f"{m.group(1)}blocks.{m.group(3)}.{m.group(4)}"
        if k in out:
            raise ValueError(f"two keys map to {k!r}")
        out[k] = v
    return out
