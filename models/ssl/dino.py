"""DINOv2's meta-architecture as MRI-CORE trains it: a ViT backbone and one DINO/iBOT head,
with the two starts the recipes use (SAM's image encoder, a DINOv2 checkpoint)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from mrifoundry.models.checkpoints import load_state
from mrifoundry.models.convert import dinov2_without_layerscale, sam_to_dinov2
from mrifoundry.models.heads import DINOHead
from mrifoundry.models.recipes import PretrainConfig
from mrifoundry.models.vit import VIT_CONFIGS, DinoVisionTransformer

__all__ = ["DinoNet", "build_backbone", "init_from_dinov2", "init_from_sam"]


class DinoNet(nn.Module):
    """Backbone + shared DINO/iBOT head. One forward so DDP sees every parameter used."""

    def __init__(self, backbone: DinoVisionTransformer, head: DINOHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, globals_: torch.Tensor, masks: torch.Tensor | None = None,
                locals_: torch.Tensor | None = None):
        g = self.backbone.forward_features(globals_, masks=masks)
        cls_g = g["x_norm_clstoken"]
        patches = g["x_norm_patchtokens"][masks] if masks is not None else cls_g[:0]
        tokens = [cls_g, patches]
        cls_l = None
        if locals_ is not None:
            cls_l = self.backbone.forward_features(locals_)["x_norm_clstoken"]
            tokens.append(cls_l)
        logits = self.head(torch.cat(tokens))  # one head call: shared DINO/iBOT head
        n_g, n_p = cls_g.shape[0], patches.shape[0]
        return {"cls_global": logits[:n_g], "patch": logits[n_g:n_g + n_p],
                "cls_local": logits[n_g + n_p:] if cls_l is not None else None, "cls_backbone": cls_g}


def build_backbone(cfg: PretrainConfig) -> DinoVisionTransformer:
    vit = dataclasses.replace(VIT_CONFIGS[cfg.arch], img_size=cfg.global_size, layerscale=None,
                              drop_path_rate=cfg.drop_path_rate)
    return DinoVisionTransformer(vit)


def init_from_sam(backbone: DinoVisionTransformer, sam_weights: Path) -> None:
    """Student ← SAM image encoder (lin→fc, pos_embed resized to the crop grid, cls slot)."""
    grid = backbone.cfg.img_size // backbone.cfg.patch_size
    backbone.load_state_dict(sam_to_dinov2(load_state(sam_weights, ("model",)), grid=grid, keep_neck=False),
                             strict=True)


def init_from_dinov2(backbone: DinoVisionTransformer, weights: Path) -> None:
    """Student ← a DINOv2 backbone checkpoint (hub ``dinov2_vit*_pretrain.pth`` or a trainer
    teacher): layerscale folded away, pos_embed resized to the crop grid (BrainFound's start)."""
    grid = backbone.cfg.img_size // backbone.cfg.patch_size
    sd = load_state(weights, ("model", "teacher", "student"))
    backbone.load_state_dict(dinov2_without_layerscale(sd, grid=grid), strict=True)
