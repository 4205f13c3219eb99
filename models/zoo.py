"""Model zoo: named encoders loaded from local weight files behind one interface.

``load(name, weights)`` returns a :class:`ZooModel` whose ``embed`` maps images in [0, 1]
to a patch-feature map, whatever the family (SAM image encoder or DINOv2 ViT). Weights
are never downloaded: each entry names the file it expects. See docs/models.md.
"""
from __future__ import annotations

import logging
import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mrifoundry.atomic import atomic_path
from mrifoundry.models import zoo3d
from mrifoundry.models.checkpoints import inner_state
from mrifoundry.models.convert import load_mri_core_into_sam, resize_sam_encoder_state
from mrifoundry.models.imagenet import IMAGENET_MEAN, IMAGENET_STD
from mrifoundry.models.registry import ZOO, ZooEntry, available, load, register
from mrifoundry.models.sam_encoder import SAM_CONFIGS, build_sam_encoder, sam_blocks_forward
from mrifoundry.models.vit import VIT_CONFIGS, DinoVisionTransformer, chunk_block_keys, unchunk_block_keys

__all__ = ["ZooModel", "ZooEntry", "ZOO", "register", "available", "load",
           "save_mri_core_checkpoint", "IMAGENET_MEAN", "IMAGENET_STD"]

log = logging.getLogger(__name__)



class ZooModel:
    """An encoder plus what is needed to feed it.

    Attributes:
        name, family ("sam" | "dinov2"), encoder (in eval mode), image_size (inputs are
        resized to it), embed_dim (channels of ``embed(layer="blocks")``), patch_size,
        mean / std (per-channel normalisation applied after scaling to [0, 1]),
        missing_keys (encoder tensors the weights did not provide; left at their init).
    """

    def __init__(self, name: str, family: str, encoder: nn.Module, *, image_size: int,
                 embed_dim: int, patch_size: int, mean: tuple[float, ...],
                 std: tuple[float, ...], missing_keys: tuple[str, ...] = ()) -> None:
        self.name, self.family, self.encoder = name, family, encoder
        self.image_size, self.embed_dim, self.patch_size = image_size, embed_dim, patch_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.missing_keys = tuple(missing_keys)

    def __repr__(self) -> str:
        return (f"ZooModel({self.name!r}, family={self.family!r}, image_size={self.image_size}, "
                f"embed_dim={self.embed_dim})")

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[B,1|3,H,W] in [0,1] → 3 channels, ``image_size`` square, normalised."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images [B, 1|3, H, W], got {tuple(images.shape)}")
        p = next(self.encoder.parameters())
        x = images.to(device=p.device, dtype=torch.float32)
        if x.shape[1] == 1:  # grayscale MRI: the encoders were trained on RGB
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    @torch.no_grad()
    def embed(self, images: torch.Tensor, layer: str = "blocks") -> torch.Tensor:
        """Patch features ``[B, C, h, w]`` (no gradients; train through ``.encoder``).

        ``layer="blocks"`` (both families, ``C = embed_dim``): DINOv2 gives its normed
        patch tokens; SAM the last block's output (SAM has no final norm). ``"neck"``
        (SAM only, ``C = out_chans``): the encoder output SAM's mask decoder consumes.
        """
        x = self.preprocess(images)
        if self.family == "sam":
            if layer == "blocks":
                return sam_blocks_forward(self.encoder, x)
            if layer == "neck":
                return self.encoder(x)
        elif layer == "blocks":
            return self.encoder.patch_grid(x)
        raise ValueError(f"layer {layer!r} is not available for family {self.family!r}")

    @torch.no_grad()
    def pooled(self, images: torch.Tensor, pool: str = "mean") -> torch.Tensor:
        """One vector per image ``[B, embed_dim]``: mean of the block features, or the
        normed cls token (``pool="cls"``, DINOv2 family only)."""
        if pool == "mean":
            return self.embed(images).mean(dim=(2, 3))
        if pool == "cls" and self.family == "dinov2":
            return self.encoder(self.preprocess(images))
        raise ValueError(f"pool {pool!r} is not available for family {self.family!r}")



# --------------------------------------------------------------------------- loaders

def _torch_load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _backbone_state(ckpt: dict) -> dict:
    """Bare, unchunked backbone keys from a DINOv2-trainer or hub checkpoint."""
    ckpt = inner_state(ckpt, ("model", "teacher", "student"))
    if any(k.startswith("backbone.") for k in ckpt):
        ckpt = {k[len("backbone."):]: v for k, v in ckpt.items() if k.startswith("backbone.")}
    return unchunk_block_keys(ckpt)


def _dino_model(entry: ZooEntry, sd: dict, arch: str, image_size: int | None) -> ZooModel:
    if arch not in VIT_CONFIGS:
        raise ValueError(f"{entry.name!r}: unknown ViT arch {arch!r}; one of {sorted(VIT_CONFIGS)}")
    cfg = VIT_CONFIGS[arch]
    # the checkpoint decides layerscale and the stored grid; the arch the rest
    has_ls = any(k.endswith(".ls1.gamma") for k in sd)
    grid = math.isqrt(sd["pos_embed"].shape[1] - 1) if "pos_embed" in sd else cfg.grid
    cfg = replace(cfg, img_size=grid * cfg.patch_size,
                  layerscale=(cfg.layerscale or 1e-5) if has_ls else None)
    vit = DinoVisionTransformer(cfg)
    vit.load_state_dict(sd)
    return ZooModel(entry.name, "dinov2", vit, image_size=image_size or cfg.img_size,
                    embed_dim=cfg.embed_dim, patch_size=cfg.patch_size, mean=entry.mean,
                    std=entry.std)


def _sam_cfg(entry: ZooEntry, arch: str, image_size: int | None):
    if arch not in SAM_CONFIGS:
        raise ValueError(f"{entry.name!r}: unknown SAM arch {arch!r}; one of {sorted(SAM_CONFIGS)}")
    cfg = SAM_CONFIGS[arch]
    return replace(cfg, img_size=image_size) if image_size else cfg


def _build_sam(entry: ZooEntry, path: Path, arch: str | None, image_size: int | None) -> ZooModel:
    cfg = _sam_cfg(entry, arch or "sam_vit_b", image_size)
    enc = build_sam_encoder(cfg)
    # only the image encoder is kept from the full SAM checkpoint
    enc.load_state_dict(resize_sam_encoder_state(_torch_load(path), cfg))
    return ZooModel(entry.name, "sam", enc, image_size=cfg.img_size, embed_dim=cfg.embed_dim,
                    patch_size=cfg.patch_size, mean=entry.mean, std=entry.std)


def _build_mri_core(entry: ZooEntry, path: Path, arch: str | None, image_size: int | None, *,
                    as_sam: bool = False, sam_init: str | Path | None = None) -> ZooModel:
    ckpt = _torch_load(path)
    if not as_sam:
        if sam_init is not None:
            raise ValueError("sam_init only applies with as_sam=True")
        return _dino_model(entry, _backbone_state(ckpt), arch or "vit_b16", image_size)
    cfg = _sam_cfg(entry, arch or "mri_core_sam", image_size)
    init = resize_sam_encoder_state(_torch_load(Path(sam_init)), cfg) if sam_init else None
    enc = build_sam_encoder(cfg)
    missing = load_mri_core_into_sam(ckpt, enc, sam_init=init)
    return ZooModel(entry.name, "sam", enc, image_size=cfg.img_size, embed_dim=cfg.embed_dim,
                    patch_size=cfg.patch_size, mean=entry.mean, std=entry.std,
                    missing_keys=tuple(missing))


def _build_dinov2(entry: ZooEntry, path: Path, arch: str | None, image_size: int | None) -> ZooModel:
    return _dino_model(entry, _backbone_state(_torch_load(path)), arch or "vit_b14", image_size)


def _build_random(entry: ZooEntry, path: None, arch: str | None, image_size: int | None, *,
                  seed: int = 0) -> ZooModel:
    arch = arch or "vit_b16"
    if arch not in VIT_CONFIGS:
        raise ValueError(f"unknown ViT arch {arch!r}; one of {sorted(VIT_CONFIGS)}")
    cfg = VIT_CONFIGS[arch]
    # seeded without touching the caller's global RNG state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        vit = DinoVisionTransformer(cfg)
    return ZooModel(entry.name, "dinov2", vit, image_size=image_size or cfg.img_size,
                    embed_dim=cfg.embed_dim, patch_size=cfg.patch_size, mean=entry.mean,
                    std=entry.std)


register(ZooEntry(
    "sam-vit-b", "sam", _build_sam, "sam_vit_b_01ec64.pth", IMAGENET_MEAN, IMAGENET_STD,
    source="facebookresearch/segment-anything", licence="Apache-2.0",
    description="SAM ViT-B image encoder (full SAM checkpoint; prompt encoder and mask "
                "decoder are dropped); 1024 px, 64x64 tokens, neck to 256 channels"))
register(ZooEntry(
    "medsam", "sam", _build_sam, "medsam_vit_b.pth", (0.0, 0.0, 0.0), (1.0, 1.0, 1.0),
    source="bowang-lab/MedSAM", licence="Apache-2.0",
    description="MedSAM: SAM ViT-B fine-tuned on medical images; inputs in [0, 1] "
                "without ImageNet normalisation"))
register(ZooEntry(
    "mri-core", "dinov2", _build_mri_core, "MRI_CORE_vitb.pth", IMAGENET_MEAN, IMAGENET_STD,
    source="mazurowski-lab/mri_foundation",
    licence="Apache-2.0 per README (no LICENSE file in the repository)",
    description="MRI-CORE DINOv2 teacher, ViT-B/16 at 224 px, no layerscale; as_sam=True "
                "loads it into SAM's encoder (use_rel_pos=False) with pos_embed resized",
    options=("as_sam", "sam_init")))
register(ZooEntry(
    "dinov2-vit-b", "dinov2", _build_dinov2, "dinov2_vitb14_pretrain.pth", IMAGENET_MEAN,
    IMAGENET_STD, source="facebookresearch/dinov2", licence="Apache-2.0",
    description="official DINOv2 ViT-B/14 backbone (518 px, layerscale)"))
def _build_brainfound(entry: ZooEntry, path: Path, arch: str | None, image_size: int | None) -> ZooModel:
    return _dino_model(entry, _backbone_state(_torch_load(path)), arch or "vit_b14", image_size)


register(ZooEntry(
    "brainfound", "dinov2", _build_brainfound, "teacher_checkpoint.pth", IMAGENET_MEAN, IMAGENET_STD,
    source="this project's pretrain-brainfound runs (BrainFound publishes no weights)", licence="-",
    description="DINOv2 ViT on 3-channel axial T1/T2/FLAIR stacks (R, G, B); feed [B, 3, H, W] stacks "
                "built by tasks/data/contrast_stacks.py"))
register(ZooEntry(
    "random", "dinov2", _build_random, None, IMAGENET_MEAN, IMAGENET_STD, source="-",
    licence="-", description="randomly initialised ViT (default ViT-B/16 224), seedable",
    options=("seed",)))


def save_mri_core_checkpoint(backbone_sd: dict, head_sd: dict, path: str | Path,
                             n_chunks: int = 4) -> Path:
    """Write ``{"teacher": {"backbone.<chunked keys>", "dino_head.*"}}`` (MRI-CORE layout).

    Accepts ``backbone.`` / ``dino_head.`` prefixed or bare keys, chunked or not; writes a
    temp file then renames it, so a killed run leaves no partial checkpoint.
    """
    def bare(sd: dict, prefix: str) -> dict:
        return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in sd.items()}

    bb = chunk_block_keys(unchunk_block_keys(bare(backbone_sd, "backbone.")), n_chunks)
    teacher = {f"backbone.{k}": v.detach().cpu() for k, v in bb.items()}
    teacher.update({f"dino_head.{k}": v.detach().cpu() for k, v in bare(head_sd, "dino_head.").items()})
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save({"teacher": teacher}, tmp)
    return path


# the volume encoders (Triad, BrainSegFounder, PRISM): models/zoo3d.py
zoo3d.register_all()
