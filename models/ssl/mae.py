"""Masked autoencoder (He et al. 2022) on our ViT, for the paper's MAE-vs-DINOv2 ablation.

The encoder is the same ``DinoVisionTransformer`` the DINOv2 trainer uses, run only on the
visible patches (its ``patch_embed``, position embedding, ``blocks`` and ``norm``); a light
transformer decoder fills in mask tokens and regresses the pixels of the masked patches.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from mrifoundry.models.imagenet import IMAGENET_MEAN, IMAGENET_STD
from mrifoundry.models.vit import Block, DinoVisionTransformer, ViTConfig

__all__ = ["MAE", "MAETransform", "patchify", "sincos_pos_embed_2d"]


def patchify(images: Tensor, patch: int) -> Tensor:
    """``[B, C, H, W]`` → ``[B, N, patch·patch·C]`` in the encoder's row-major token order.

    H and W are cropped to multiples of ``patch``, as the patch embedding does.
    """
    b, c, hh, ww = images.shape
    h, w = hh // patch, ww // patch
    x = images[:, :, : h * patch, : w * patch].reshape(b, c, h, patch, w, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, h * w, patch * patch * c)


def sincos_pos_embed_2d(h: int, w: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``[h·w, dim]`` (half the channels per axis).

    Parameter-free, so the decoder works at any input size without interpolation.
    """
    if dim % 4:
        raise ValueError(f"decoder_dim must be a multiple of 4 for 2-D sin-cos positions, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))

    def axis(n: int) -> Tensor:
        ang = torch.arange(n, dtype=torch.float64)[:, None] * omega[None]
        return torch.cat([ang.sin(), ang.cos()], dim=1)  # [n, dim/2]

    ys, xs = axis(h), axis(w)
    grid = torch.cat([ys[:, None].expand(h, w, -1), xs[None].expand(h, w, -1)], dim=-1)
    return grid.reshape(h * w, dim).float()


class MAE(nn.Module):
    """MAE objective around a ``DinoVisionTransformer`` encoder.

    Args:
        encoder: the backbone; its ``mask_token`` is frozen (MAE drops masked patches
            instead, and an unused trainable parameter makes DDP fail).
        decoder_dim: decoder width (MAE: 512).
        decoder_depth: decoder blocks (MAE: 8).
        decoder_num_heads: default: ``decoder_dim // 32`` when that divides, else 1.
        mask_ratio: fraction of patches hidden from the encoder, per sample.
        norm_pix_loss: regress per-patch normalised pixels (MAE's better-performing target).
    """

    def __init__(self, encoder: DinoVisionTransformer, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_num_heads: int | None = None, mask_ratio: float = 0.75, norm_pix_loss: bool = True) -> None:
        super().__init__()
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if decoder_dim % 4:
            raise ValueError(f"decoder_dim must be a multiple of 4, got {decoder_dim}")
        self.encoder = encoder
        self.encoder.mask_token.requires_grad_(False)
        self.patch_size = encoder.patch_size
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        in_chans = encoder.patch_embed.proj.in_channels
        heads = decoder_num_heads or (decoder_dim // 32 if decoder_dim % 32 == 0 else 1)
        dec_cfg = ViTConfig(embed_dim=decoder_dim, num_heads=heads, layerscale=None, drop_path_rate=0.0)
        self.decoder_embed = nn.Linear(encoder.embed_dim, decoder_dim)
        self.decoder_mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_blocks = nn.ModuleList(Block(dec_cfg) for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch_size ** 2 * in_chans)
        self._init_decoder()

    def _init_decoder(self) -> None:
        nn.init.normal_(self.decoder_mask_token, std=0.02)
        for name, m in self.named_modules():
            if name.startswith("encoder"):
                continue
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def random_masking(self, n_tokens: int, batch: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Per-sample random split: ``(ids_keep [B, n_keep], mask [B, N] bool)``.

        Exactly ``N - round(N·(1 - mask_ratio))`` patches are masked in every sample.
        """
        n_keep = max(1, int(round(n_tokens * (1.0 - self.mask_ratio))))
        order = torch.rand(batch, n_tokens, device=device).argsort(dim=1)
        ids_keep = order[:, :n_keep]
        mask = torch.ones(batch, n_tokens, dtype=torch.bool, device=device)
        mask.scatter_(1, ids_keep, False)
        return ids_keep, mask

    def forward_encoder(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
        """Encode the visible patches: ``(latent [B, 1+n_keep, D], ids_keep, mask, (h, w))``."""
        enc = self.encoder
        h, w = images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size
        x = enc.patch_embed(images)
        pos = enc.interpolate_pos_encoding(h, w, x.dtype)
        x = x + pos[:, 1:]
        ids_keep, mask = self.random_masking(x.shape[1], x.shape[0], x.device)
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        cls = (enc.cls_token + pos[:, :1]).to(x.dtype).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in enc.blocks:
            x = blk(x)
        return enc.norm(x), ids_keep, mask, (h, w)

    def forward_decoder(self, latent: Tensor, ids_keep: Tensor, grid: tuple[int, int]) -> Tensor:
        """Predicted pixels of every patch ``[B, N, patch²·C]``."""
        b, n = latent.shape[0], grid[0] * grid[1]
        x = self.decoder_embed(latent)
        tokens = self.decoder_mask_token.to(x.dtype).expand(b, n, -1).clone()
        tokens.scatter_(1, ids_keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x[:, 1:])
        tokens = tokens + sincos_pos_embed_2d(*grid, x.shape[-1]).to(x.device, x.dtype)
        x = torch.cat([x[:, :1], tokens], dim=1)
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def loss(self, images: Tensor, pred: Tensor, mask: Tensor) -> Tensor:
        """Mean squared error over the masked patches (per-patch normalised target if set)."""
        target = patchify(images, self.patch_size).float()
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        per_patch = (pred.float() - target).pow(2).mean(dim=-1)
        return per_patch[mask].mean()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, pred [B, N, patch²·C], mask [B, N] bool, True = masked)`` for ``images [B, C, H, W]``."""
        latent, ids_keep, mask, grid = self.forward_encoder(images)
        pred = self.forward_decoder(latent, ids_keep, grid)
        return self.loss(images, pred, mask), pred, mask


class MAETransform:
    """One random-resized crop + flip, ImageNet normalisation (MAE's recipe, no colour changes).

    Input ``[1, H, W]`` (grey, replicated to 3 channels) or ``[3, H, W]`` (a T1/T2/FLAIR stack,
    tasks/data/contrast_stacks.py, used as is); float in [0, 1]. Output ``[3, size, size]``.
    """

    def __init__(self, size: int):
        from torchvision.transforms import v2
        self.t = v2.Compose([v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
                             v2.RandomHorizontalFlip(), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __call__(self, img: Tensor) -> Tensor:
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"expected a [1|3, H, W] image, got shape {tuple(img.shape)}")
        return self.t(img.expand(3, -1, -1) if img.shape[0] == 1 else img)
