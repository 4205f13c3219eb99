"""Triad (wangshansong1/Triad): 3D masked reconstruction + log-ratio alignment with text.

One forward: cubes of the crop are masked (``mask_ratio`` of ``mask_patch``³ cubes), the
encoder sees the masked crop, :class:`~models.ssl3d.decoder3d.LightDecoder3d` rebuilds the
crop from the deepest feature map (L1 over masked voxels), and a projection of the pooled
multi-scale features is pulled towards the geometry of the series' description embeddings by
:func:`log_ratio_loss`. Masking follows Triad per encoder: the plain-conv U-Net replaces masked
voxels by a learned ``mask_token_vol``; Swin replaces masked patch tokens after the patch
embedding by a learned ``mask_token``.

Departures from Triad's code (``simmim_advanced.py``), each without effect on the published
encoder layout:

- The U-Net's ``z_proj`` (1³ conv 320→320) followed by the decoder's ``z_adapter`` (1³ conv
  320→24) is one linear map; the decoder's single input adapter does both.
- Swin's pooled features for the text head are the layer-normed maps of
  :class:`~models.encoders3d.Encoder3d` (Triad pools the un-normed stage outputs 0–3).
- The log-ratio loss skips degenerate rows (see :func:`log_ratio_loss`) instead of letting
  self-pairs through with an ε-sized distance.
- The head exists (and is trained through a zero-weighted term) even when ``text_weight`` is 0.
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from mrifoundry.models.checkpoints import inner_state
from mrifoundry.models.encoders3d import Encoder3d, build_encoder3d, pool_features
from mrifoundry.models.ssl3d.decoder3d import LightDecoder3d, random_patch_mask

__all__ = ["TriadPretrainer", "load_triad_encoder", "log_ratio_loss", "masked_l1"]

log = logging.getLogger(__name__)

# Triad's default decoder width for the U-Net (SimMIMSkip_light's feature_size=24); Swin
# decodes at its deepest width (768 for Swin-B: the adapter is the identity).
UNET_DECODER_WIDTH = 24


def log_ratio_loss(f: Tensor, y: Tensor, perms: tuple[Tensor, Tensor] | None = None, eps: float = 1e-4) -> Tensor:
    """Triad's LogRatioLoss: distance ratios of ``f`` [B, D] should match those of ``y`` [B, E].

    For each row r with partners i = p[r], j = q[r] (two random permutations of the batch):
    ``(log(‖f_r−f_i‖/‖f_r−f_j‖) − log(‖y_r−y_i‖/‖y_r−y_j‖))²``, averaged over rows. Distances
    are ``sqrt(‖·‖² + eps)`` (Triad adds ``eps / B``; a fixed ``eps`` keeps the loss
    independent of the per-GPU batch). Rows where i = r, j = r or i = j compare a sample with
    itself or a ratio with 1 and carry no information: they are left out of the mean. With no
    valid row (always for B < 3) the loss is 0, still attached to the graph.

    Args:
        f: projected features [B, D].
        y: target embeddings [B, E] (e.g. description embeddings).
        perms: the permutations (p, q), int64 [B] each; default: two ``torch.randperm`` on
            the global RNG.
        eps: added to squared distances (identical rows, e.g. two series with the same
            description, give log √eps instead of −∞).
    """
    f, y = f.float(), y.float()
    b = f.shape[0]
    if perms is None:
        p, q = torch.randperm(b, device=f.device), torch.randperm(b, device=f.device)
    else:
        p, q = (t.to(device=f.device, dtype=torch.long) for t in perms)

    def dist(a: Tensor, idx: Tensor) -> Tensor:
        return ((a - a[idx]) ** 2).flatten(1).sum(1).add(eps).sqrt()

    log_f = dist(f, p).log() - dist(f, q).log()
    log_y = dist(y, p).log() - dist(y, q).log()
    rows = torch.arange(b, device=f.device)
    valid = ((p != rows) & (q != rows) & (p != q)).float()
    # sum / count rather than boolean indexing: no host sync, and 0 (with a graph) when empty
    return ((log_f - log_y) ** 2 * valid).sum() / valid.sum().clamp_min(1.0)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |pred − target| over the masked voxels (``mask`` [B, 1, …] broadcast over channels)."""
    m = mask.to(torch.float32).expand_as(pred)
    return ((pred.float() - target.float()).abs() * m).sum() / m.sum().clamp_min(1.0)


def _ssl_head(in_dim: int, hidden: int, out_dim: int) -> nn.Sequential:
    """Triad's ``_build_ssl_head``: (Linear → BN without affine or running stats → ReLU) × 2 → Linear."""
    def bn() -> nn.BatchNorm1d:
        return nn.BatchNorm1d(hidden, affine=False, track_running_stats=False)

    return nn.Sequential(nn.Linear(in_dim, hidden), bn(), nn.ReLU(inplace=True),
                         nn.Linear(hidden, hidden), bn(), nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim))


def _total_stride(enc: Encoder3d) -> int:
    cfg = enc.cfg
    if enc.kind == "swin":
        return cfg.patch_size * 2 ** len(cfg.depths)
    return math.prod(cfg.strides)


class TriadPretrainer(nn.Module):
    """Triad's pretraining module on ``batch["image"]`` [B, C, roi³] (+ ``batch["text"]`` [B, text_dim]).

    Args:
        encoder: a :func:`~models.encoders3d.build_encoder3d` name ("swin_b_v2", "triad_unet",
            "swin_tiny_v2", "unet_tiny", …).
        roi: crop side; a multiple of the encoder's total stride (32, or 16 for "unet_tiny")
            and of ``mask_patch``.
        mask_ratio: fraction of ``mask_patch``³ cubes masked per sample.
        mask_patch: masked cube side in voxels (a multiple of Swin's patch size).
        text_dim: description-embedding size (384 for all-MiniLM-L6-v2).
        text_weight: weight of the log-ratio term (Triad's ``ssl_weight``).
        ssl_hidden: hidden width of the projection head.
        in_channels: image channels.
        decoder_width: decoder width after its input adapter; default Triad's (Swin: the
            deepest channels; U-Net: 24).

    ``forward`` returns ``{"loss", "recon", "text"}``. The text term is 0 (the head still gets
    a zero gradient, for DDP) when ``text_weight`` is 0, the batch has no ``"text"`` or fewer
    than 2 samples; the head's batch norm needs ≥ 2 and the loss ≥ 3 samples to be non-zero.
    """

    def __init__(self, encoder: str = "swin_b_v2", roi: int = 96, mask_ratio: float = 0.6, mask_patch: int = 16,
                 text_dim: int = 384, text_weight: float = 0.01, ssl_hidden: int = 2048, in_channels: int = 1,
                 decoder_width: int | None = None) -> None:
        super().__init__()
        self.encoder3d = build_encoder3d(encoder, in_channels)
        self.encoder_name, self.roi, self.in_channels = encoder, roi, in_channels
        self.mask_ratio, self.mask_patch, self.text_weight = mask_ratio, mask_patch, float(text_weight)
        kind, cfg = self.encoder3d.kind, self.encoder3d.cfg
        stride = _total_stride(self.encoder3d)
        n_up = int(round(math.log2(stride)))
        if 2 ** n_up != stride:
            raise ValueError(f"{encoder}: total stride {stride} is not a power of 2")
        if roi % stride or roi % mask_patch:
            raise ValueError(f"roi {roi} must be a multiple of {encoder}'s stride {stride} "
                             f"and of mask_patch {mask_patch}")
        if kind == "plainconv" and roi // stride < 2:
            raise ValueError(f"{encoder}: instance norm needs ≥ 2³ voxels in its last stage; "
                             f"use roi ≥ {2 * stride}")
        if kind == "swin":
            if mask_patch % cfg.patch_size:
                raise ValueError(f"mask_patch {mask_patch} must be a multiple of the Swin patch size {cfg.patch_size}")
            self.mask_token = nn.Parameter(torch.zeros(1, cfg.embed_dim, 1, 1, 1))
            nn.init.trunc_normal_(self.mask_token, std=0.02)
        else:
            self.mask_token_vol = nn.Parameter(torch.zeros(1, in_channels, 1, 1, 1))
            nn.init.trunc_normal_(self.mask_token_vol, std=0.02)
        deepest = self.encoder3d.channels[-1]
        width = decoder_width or (deepest if kind == "swin" else UNET_DECODER_WIDTH)
        self.decoder = LightDecoder3d(deepest, in_channels, n_up, width)
        self.ssl_head = _ssl_head(self.encoder3d.pooled_dim, ssl_hidden, text_dim)

    def _encode(self, x: Tensor, mask: Tensor) -> list[Tensor]:
        """Encoder features of the masked crop."""
        if self.encoder3d.kind == "plainconv":
            m = mask.to(x.dtype)
            return self.encoder3d(x * (1 - m) + self.mask_token_vol.to(x.dtype) * m)
        p = self.encoder3d.cfg.patch_size
        tokens = mask[:, :, ::p, ::p, ::p]  # cubes are patch-aligned: one value per patch token

        def replace_masked_tokens(module: nn.Module, inputs: tuple, out: Tensor) -> Tensor:
            t = tokens.to(out.dtype)
            return out * (1 - t) + self.mask_token.to(out.dtype) * t

        # a hook rather than a copy of MONAI's SwinTransformer.forward, which stays the only one
        handle = self.encoder3d.swinViT.patch_embed.register_forward_hook(replace_masked_tokens)
        try:
            return self.encoder3d(x)
        finally:
            handle.remove()

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        x = batch["image"]
        b, r = x.shape[0], x.shape[-1]
        if x.ndim != 5 or tuple(x.shape[1:]) != (self.in_channels, self.roi, self.roi, self.roi):
            raise ValueError(f"expected image [B, {self.in_channels}, {self.roi}³], got {tuple(x.shape)}")
        mask = random_patch_mask((b, r), self.mask_patch, self.mask_ratio, device=x.device)
        feats = self._encode(x, mask)
        recon = masked_l1(self.decoder(feats[-1]), x, mask)
        text = batch.get("text")
        if self.text_weight > 0 and text is not None and b >= 2:
            txt = log_ratio_loss(self.ssl_head(pool_features(feats)), text)
        else:
            # keep the head in the graph with a zero gradient: DDP expects every parameter
            txt = sum(p.sum() for p in self.ssl_head.parameters()) * 0.0
        return {"loss": recon + self.text_weight * txt, "recon": recon, "text": txt}

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """The encoder in Triad's published layout: ``encoder.stages.*`` (plain-conv U-Net,
        QuickStart's ``get_Plain_nnUNet``) or ``backbone.swinViT.*`` (Swin, ``TriadHead``)."""
        sd = self.encoder3d.state_dict()
        if self.encoder3d.kind == "swin":
            return {"backbone." + k: v for k, v in sd.items()}
        return dict(sd)


# --------------------------------------------------------------------------- loading

# Source prefixes of the encoder keys, first match wins: the published files, Triad's
# pretraining checkpoints (SimMIMSkip_light.encoder.<…>), our own TriadPretrainer, bare.
_PREFIXES = {
    "plainconv": (("encoder.encoder.stages.", "encoder3d.encoder.stages.", "encoder.stages.", "stages."),
                  "encoder.stages."),
    "swin": (("backbone.swinViT.", "encoder.swinViT.", "encoder3d.swinViT.", "swinViT."), "swinViT."),
}


def _read(state: dict | str | Path) -> dict:
    if isinstance(state, (str, Path)):
        # Triad's checkpoint-{epoch}.pth stores its argparse Namespace beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            state = torch.load(state, map_location="cpu", weights_only=True)
    state = inner_state(state, ("model", "state_dict", "model_state"))
    return {k.removeprefix("module."): v for k, v in state.items() if isinstance(v, Tensor)}


def load_triad_encoder(state: dict | str | Path, name: str = "triad_unet", in_channels: int = 1) -> Encoder3d:
    """A Triad encoder from a published file, a Triad ``checkpoint-{epoch}.pth`` or our export.

    Accepts a path or a dict, raw or wrapped as ``{'model': …}`` / ``{'state_dict': …}``,
    with or without ``module.`` prefixes. The encoder keys are picked by ``name``'s kind
    (plain conv: ``encoder.stages.*``, ``encoder.encoder.stages.*``; Swin:
    ``backbone.swinViT.*``, ``encoder.swinViT.*``, ``swinViT.*``); every other key (decoder,
    mask tokens, projection head, optimizer …) is dropped, and the encoder loads strictly.

    Raises:
        ValueError: no encoder keys of that kind, or missing / unexpected / mis-shaped keys.
    """
    sd = _read(state)
    enc = build_encoder3d(name, in_channels)
    sources, dst = _PREFIXES[enc.kind]
    src = next((s for s in sources if any(k.startswith(s) for k in sd)), None)
    if src is None:
        heads = sorted({k.split(".", 1)[0] for k in sd})
        raise ValueError(f"no {enc.kind} encoder keys ({' | '.join(s + '*' for s in sources)}) for {name!r}; "
                         f"the state dict's keys start with {heads[:8]}")
    picked = {dst + k[len(src):]: v for k, v in sd.items() if k.startswith(src)}
    if len(picked) < len(sd):
        log.info("Triad %s: kept %d encoder tensors under %r, dropped %d other keys", name, len(picked), src,
                 len(sd) - len(picked))
    target = enc.state_dict()
    missing = sorted(set(target) - set(picked))
    unexpected = sorted(set(picked) - set(target))
    shapes = sorted(f"{k} {tuple(picked[k].shape)} ≠ {tuple(target[k].shape)}" for k in set(picked) & set(target)
                    if picked[k].shape != target[k].shape)
    if missing or unexpected or shapes:
        raise ValueError(f"Triad {name!r} encoder does not match the state dict (keys under {src!r}): "
                         f"{len(missing)} missing {missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}, "
                         f"{len(shapes)} mis-shaped {shapes[:5]}")
    enc.load_state_dict(picked, strict=True)
    return enc
