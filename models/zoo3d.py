"""Zoo entries of the volume encoders: Triad, BrainSegFounder, PRISM (family ``volume``).

Each loads the published checkpoint layout (Triad's ``encoder.stages.*`` / ``backbone.swinViT.*``,
BrainSegFounder's ``module.swinViT.*``, PRISM's ``…swinViT.*`` suffix match) and this project's
own ``checkpoints/encoder_<it>.pth`` (tasks/pretraining/volumes.py; the encoder configuration is read
from the file). ``embed(volumes)`` gives the deepest feature map, ``pooled(volumes)`` one
vector per volume (global average of every scale, concatenated) for probing.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from mrifoundry.models.encoders3d import Encoder3d
from mrifoundry.models.registry import ZooEntry, register

__all__ = ["VolumeZooModel"]


class VolumeZooModel:
    """A 3D encoder plus what is needed to feed it (inputs: [B, C, D, H, W] in [0, 1])."""

    family = "volume"

    def __init__(self, name: str, encoder: Encoder3d, *, roi: int = 96, missing_keys: tuple[str, ...] = ()):
        self.name, self.encoder, self.roi = name, encoder, roi
        self.embed_dim = encoder.pooled_dim
        self.missing_keys = tuple(missing_keys)

    def __repr__(self) -> str:
        return f"VolumeZooModel({self.name!r}, {self.encoder.kind}, embed_dim={self.embed_dim})"

    def preprocess(self, volumes: torch.Tensor) -> torch.Tensor:
        """[B, C, D, H, W] (or [B, D, H, W]) → float on the encoder's device, each side
        zero-padded to a multiple of 32 (both encoders halve the grid 5 times)."""
        x = volumes[:, None] if volumes.ndim == 4 else volumes
        if x.ndim != 5 or x.shape[1] != self.encoder.cfg.in_channels:
            raise ValueError(f"expected volumes [B, {self.encoder.cfg.in_channels}, D, H, W], got {tuple(volumes.shape)}")
        p = next(self.encoder.parameters())
        x = x.to(device=p.device, dtype=torch.float32)
        pad = []
        for n in reversed(x.shape[2:]):
            extra = (-n) % 32
            pad += [extra // 2, extra - extra // 2]
        return F.pad(x, pad) if any(pad) else x

    @torch.no_grad()
    def embed(self, volumes: torch.Tensor) -> torch.Tensor:
        """The deepest feature map [B, C, d, h, w]."""
        return self.encoder(self.preprocess(volumes))[-1]

    @torch.no_grad()
    def pooled(self, volumes: torch.Tensor) -> torch.Tensor:
        """[B, embed_dim]: every scale's global average, concatenated (Triad's ``forward_encs``)."""
        return self.encoder.pooled(self.preprocess(volumes))


def _own_checkpoint(path: Path) -> dict | None:
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt if isinstance(ckpt, dict) and "method" in ckpt and "state_dict" in ckpt else None


def _builder(method: str, default_arch: str, loader_name: str):
    def build(entry, path: Path, arch: str | None, image_size: int | None, *, in_channels: int | None = None):
        import importlib
        loader = getattr(importlib.import_module(f"mrifoundry.models.ssl3d.{method}"), loader_name)
        own = _own_checkpoint(path)
        if own is not None and own["method"] != method:
            raise ValueError(f"{path.name} is a {own['method']} checkpoint, not {method}")
        name = arch or (own["encoder"] if own else default_arch)
        channels = in_channels or (own["in_channels"] if own else 1)
        encoder = loader(own if own is not None else str(path), name=name, in_channels=channels)
        return VolumeZooModel(entry.name, encoder, roi=image_size or (own["roi"] if own else 96))
    return build


def register_all() -> None:
    none = (0.0,), (1.0,)
    register(ZooEntry(
        "triad-unet", "volume", _builder("triad", "triad_unet", "load_triad_encoder"), "Triad-PlainConvUNet-MAE.pth",
        *none, source="wangshansong1/Triad", licence="MIT badge only (no LICENSE file)",
        description="Triad's nnU-Net plain conv encoder (6 stages 32-320, instance norm), keys encoder.stages.*; "
                    "inputs RAS 1 mm, robust min-max [0, 1]", options=("in_channels",)))
    register(ZooEntry(
        "triad-swin", "volume", _builder("triad", "swin_b_v2", "load_triad_encoder"), "Triad-SwinB-MAE.pth",
        *none, source="wangshansong1/Triad", licence="MIT badge only (no LICENSE file)",
        description="Triad's MONAI Swin-B v2 (embed 48, depths 2-2-2-2, window 7, patch 2), keys backbone.swinViT.*",
        options=("in_channels",)))
    register(ZooEntry(
        "brainsegfounder", "volume", _builder("brainsegfounder", "swin_b", "load_brainsegfounder_encoder"),
        "model_bestValRMSE.pt", *none, source="lab-smile/BrainSegFounder", licence="GPL-3.0 (weights and code)",
        description="BrainSegFounder's SwinUNETR backbone (module.swinViT.*); loads into MONAI SwinUNETR",
        options=("in_channels",)))
    register(ZooEntry(
        "prism", "volume", _builder("prism", "swin_b_v2", "load_prism_encoder"), "PRISM weights (.pth)",
        *none, source="zqiuak/PRISM", licence="Apache-2.0",
        description="PRISM's Swin v2 backbone; keys matched by the swinViT suffix as PRISM's load_pt does",
        options=("in_channels",)))
