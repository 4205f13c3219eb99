"""PRISM pretraining (Chen et al. 2025, arXiv 2508.07165): anatomy / sequence disentanglement on Swin v2.

The backbone is MONAI's ``SwinTransformer`` (``use_v2``) held as ``swinViT`` by
:class:`models.encoders3d.Encoder3d`, as in PRISM's ``PT_MRI_FM``. On its deepest map sit two
branches: an **anatomy** map (meant to be sequence-invariant) and a **sequence** code (meant to
carry contrast and acquisition). One forward over a voxel-aligned pair of series of the same exam
(``image``, ``image2``) trains:

- ``recon``: masked reconstruction of each image from its own anatomy and code (L1 on masked
  voxels) plus cross-sequence synthesis — image2 decoded from (anatomy of image, code of image2)
  and vice versa (L1 on all voxels). The decoder sees the sequence only through the code (FiLM),
  so the contrast of image2 can only come from image2's code.
- ``meta``: (log TR, log TE, flip/90) regressed from the sequence code, L1 over known entries.
- ``part``: body part from the pooled anatomy map, cross-entropy ignoring -1.
- ``contrastive``: MONAI ``ContrastiveLoss`` (NT-Xent, temperature 0.5) between projections of the
  pooled anatomy of image and image2: the same exam in two contrasts is the positive pair.

Departures from the paper
-------------------------
PRISM's model and training loop are published (zqiuak/PRISM, Apache-2.0: ``main/model/model_pt.py``,
``main/dataset/pretrain/socks.py``, ``main/run/train_pt.py``), but its per-dataset modules are not,
so the recipe cannot run as released. We keep the backbone, the heads, MONAI's contrastive loss and
the loss weights (recon 1, meta 1, part 1, contrastive 0.5) and change the rest, to fit one
forward / one backward / one optimiser per step (our trainer, DDP) and a small compute budget:

1. **No GAN discriminator.** PRISM adds a ``disc_head`` (softplus logistic loss, weight 1) trained
   in separate D and G steps with their own AdamW (G every 10 steps, ×0.2; D ×0.5). Ours is one
   summed loss per step.
2. **Synthesis from a real second sequence, not from noise.** PRISM maps Gaussian noise through a
   4-layer w-mapping, mixes it into the sequence features (1³ conv) and decodes with StyleGAN2-style
   ``ModConv3d``; the fake image has no pixel target (discriminator + contrastive only). Ours
   decodes image2 from image's anatomy and image2's code with an L1 target — the voxel-aligned
   pairs of our data pipeline give a direct disentanglement signal without a GAN. Modulation is
   FiLM (per-channel scale and shift from the code after each decoder norm) instead of
   w-mapping + ``ModConv3d``.
3. **Decoder input.** PRISM decodes ``latent_agg(cat(structure, sequence)) + deepest map``; ours
   decodes the anatomy map alone, the sequence entering only through FiLM (a bottleneck that
   forces contrast into the code).
4. **Sequence branch** is a pooled MLP code of ``sequence_dim`` (64) instead of PRISM's 1³
   conv-IN-LReLU map of the backbone's width (pooled for the metadata head).
5. **Masking.** PRISM uses SwinUNETR's ``aug_rand`` (random noise-filled cuboids up to 30 % of the
   voxels plus cut-and-paste from another sample) and L1 on all voxels; ours masks 60 % of 16³
   patches with a learned value and takes L1 on the masked voxels (SimMIM-style).
6. **Contrastive pairs.** PRISM contrasts the structure projection (Linear → 512) of a real image
   with that of its noise-synthesised copy; ours contrasts image with image2 (two real sequences).
   Same loss, temperature and projection size.
7. **Metadata.** PRISM marks unknown values as 0 and replaces the target by the prediction (zero
   loss, still counted in the mean), summing per-key means over raw TR, TE, flip; ours marks
   unknown as NaN and averages L1 over known entries of (log TR ms, log TE ms, flip/90).
8. **Body parts.** PRISM has 7 classes (head, neck, chest, upper / lower abdomen, knee, unknown —
   "unknown" trained as a class); ours has ``n_body_parts`` classes from our catalog, -1 ignored.
9. **Norms.** GroupNorm(1) instead of InstanceNorm in the anatomy branch and the first decoder
   step: both act on the deepest map, 1³ at a 32³ test crop (3³ at 96³), where instance norm is
   undefined. The other decoder steps keep PRISM's Conv → IN → (FiLM) → LeakyReLU → Upsample.
10. **Augmentation.** PRISM's random axis order (one of 6 orientation codes) and axis flips are
    left to the data pipeline, which must apply them identically to image and image2.
11. **One encoder pass.** Metadata, body part and contrastive terms use the features of the masked
    inputs (PRISM: the masked input in its recon step, the real image in its D step), so
    [image; image2] go through the backbone once.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mrifoundry.models.checkpoints import inner_state
from mrifoundry.models.encoders3d import SWIN_CONFIGS, Encoder3d, build_encoder3d

__all__ = ["DEFAULT_WEIGHTS", "Encoded", "PrismPretrainer", "load_prism_encoder", "meta_l1_loss", "part_ce_loss"]

DEFAULT_WEIGHTS: dict[str, float] = {"recon": 1.0, "meta": 1.0, "part": 1.0, "contrastive": 0.5}
N_META = 3  # log TR, log TE, flip / 90
_VIT_KEY = "swinViT."


def meta_l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """Mean L1 over the finite entries of ``target``; 0 (with a zero gradient path) if none is."""
    known = torch.isfinite(target)
    diff = (pred.float() - torch.where(known, target.float(), 0.0)).abs()
    # × known, not indexing: keeps every prediction in the graph (DDP) and avoids a device sync
    return (diff * known).sum() / known.sum().clamp_min(1)


def part_ce_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy over labels ≥ 0 (-1 = unknown, ignored); 0 (with a gradient path) if none is known."""
    known = labels >= 0
    ce = F.cross_entropy(logits.float(), labels.clamp_min(0), reduction="none")
    return (ce * known).sum() / known.sum().clamp_min(1)


@dataclass
class Encoded:
    """What the two branches give for a batch of images."""
    anatomy: Tensor  # [N, A, d, h, w] anatomy map
    code: Tensor  # [N, S] sequence code
    pooled: Tensor  # [N, A] global average of the anatomy map


class _FiLMBlock(nn.Module):
    """Conv3d 3³ → norm → FiLM(code) → LeakyReLU → Upsample ×2 (PRISM's decoder step, plus FiLM)."""

    def __init__(self, c_in: int, c_out: int, code_dim: int, norm: nn.Module) -> None:
        super().__init__()
        self.conv = nn.Conv3d(c_in, c_out, 3, padding=1)
        self.norm = norm
        # default init (not zero): the code must steer the output, and get a gradient, from step one
        self.film = nn.Linear(code_dim, 2 * c_out)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        x = self.norm(self.conv(x))
        scale, shift = self.film(code)[:, :, None, None, None].chunk(2, dim=1)
        x = F.leaky_relu(x * (1 + scale) + shift)
        return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


class PrismPretrainer(nn.Module):
    """PRISM-style pretraining of a Swin v2 encoder on pairs of sequences of one exam.

    Args:
        encoder: a Swin configuration of :data:`models.encoders3d.SWIN_CONFIGS` (PRISM scale B:
            ``"swin_b_v2"``; tests: ``"swin_tiny_v2"``).
        in_channels: image channels.
        roi: crop side; a multiple of 32 (the backbone's stride) and of ``mask_patch``.
        n_body_parts: body-part classes.
        mask_ratio: fraction of ``mask_patch``³ patches masked per image.
        mask_patch: side of a masked patch, voxels.
        anatomy_dim: channels of the anatomy map (default: the deepest Swin width, PRISM's).
        sequence_dim: size of the sequence code.
        temperature: NT-Xent temperature (MONAI's default, PRISM's).
        weights: loss weights; missing keys take :data:`DEFAULT_WEIGHTS`.
        contrast_dim: projection size for the contrastive term (PRISM's ``str_contrastive_head``: 512).
    """

    def __init__(self, encoder: str = "swin_b_v2", in_channels: int = 1, roi: int = 96, n_body_parts: int = 8,
                 mask_ratio: float = 0.6, mask_patch: int = 16, anatomy_dim: int | None = None,
                 sequence_dim: int = 64, temperature: float = 0.5, weights: dict[str, float] | None = None,
                 contrast_dim: int = 512) -> None:
        super().__init__()
        if encoder not in SWIN_CONFIGS:
            raise ValueError(f"PRISM needs a Swin encoder ({', '.join(SWIN_CONFIGS)}), got {encoder!r}")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if roi % 32 or roi % mask_patch:
            raise ValueError(f"roi {roi} must be a multiple of 32 and of mask_patch {mask_patch}")
        unknown = set(weights or {}) - set(DEFAULT_WEIGHTS)
        if unknown:
            raise ValueError(f"unknown loss weights {sorted(unknown)}; known: {list(DEFAULT_WEIGHTS)}")
        from monai.losses import ContrastiveLoss

        self.weights = {**DEFAULT_WEIGHTS, **(weights or {})}
        self.roi, self.in_channels = roi, in_channels
        self.mask_ratio, self.mask_patch = mask_ratio, mask_patch
        self.encoder3d: Encoder3d = build_encoder3d(encoder, in_channels=in_channels)
        deep = self.encoder3d.channels[-1]
        adim = anatomy_dim or deep
        self.mask_value = nn.Parameter(torch.zeros(1, in_channels, 1, 1, 1))
        self.anatomy = nn.Sequential(nn.Conv3d(deep, adim, 1), nn.GroupNorm(1, adim), nn.LeakyReLU())
        self.sequence = nn.Sequential(nn.Linear(deep, deep), nn.LeakyReLU(), nn.Linear(deep, sequence_dim))
        self.meta_head = nn.Linear(sequence_dim, N_META)
        self.part_head = nn.Linear(adim, n_body_parts)
        self.contrast_head = nn.Linear(adim, contrast_dim)
        # PRISM's decoder widths: dim/2, /4, /8, /16, /16 — one ×2 step per Swin downsampling
        n_up = len(self.encoder3d.cfg.depths) + 1
        widths = [max(adim // 2 ** min(i + 1, 4), 1) for i in range(n_up)]
        # instance norm is undefined on one voxel: the first step (on the deepest map, 1³ at a 32³
        # crop) normalises over channels and voxels instead
        norms = [nn.GroupNorm(1, widths[0]), *(nn.InstanceNorm3d(c) for c in widths[1:])]
        self.decoder = nn.ModuleList(_FiLMBlock(c_in, c_out, sequence_dim, norm)
                                     for c_in, c_out, norm in zip([adim, *widths[:-1]], widths, norms))
        self.recon_head = nn.Conv3d(widths[-1], in_channels, 1)
        # batch size is taken from the inputs (MONAI ≥ 1.2 warns when it is passed)
        self.contrastive_loss = ContrastiveLoss(temperature=temperature)

    # --- pieces (public so tests can recompute each term) ---------------------------------------

    def random_mask(self, x: Tensor) -> Tensor:
        """Boolean voxel mask ``[N, 1, *spatial]``: exactly ``round(ratio · patches)`` patches per image.

        Draws from torch's global RNG on ``x.device``.
        """
        n, p = x.shape[0], self.mask_patch
        if any(s % p for s in x.shape[2:]):
            raise ValueError(f"spatial shape {tuple(x.shape[2:])} is not a multiple of mask_patch {p}")
        grid = [s // p for s in x.shape[2:]]
        n_patch = grid[0] * grid[1] * grid[2]
        n_mask = round(self.mask_ratio * n_patch)
        # a uniformly random permutation per image: its entries < n_mask mark exactly n_mask patches
        m = torch.rand(n, n_patch, device=x.device).argsort(dim=1) < n_mask
        m = m.view(n, 1, grid[0], 1, grid[1], 1, grid[2], 1).expand(-1, -1, -1, p, -1, p, -1, p)
        return m.reshape(n, 1, *x.shape[2:])

    def mask_input(self, x: Tensor, mask: Tensor) -> Tensor:
        return torch.where(mask, self.mask_value.to(x.dtype), x)

    def encode(self, x: Tensor) -> Encoded:
        deepest = self.encoder3d(x)[-1]
        anatomy = self.anatomy(deepest)
        code = self.sequence(deepest.mean(dim=(2, 3, 4)))
        return Encoded(anatomy, code, anatomy.mean(dim=(2, 3, 4)))

    def decode(self, anatomy: Tensor, code: Tensor) -> Tensor:
        """Image from an anatomy map, in the contrast described by ``code``."""
        x = anatomy
        for block in self.decoder:
            x = block(x, code)
        return self.recon_head(x)

    def cross_synthesis(self, anatomy: Tensor, code: Tensor) -> Tensor:
        """For ``N = 2B`` stacked [image; image2]: decode each anatomy with the OTHER half's code.

        Output rows ``:B`` are image2 (anatomy of image, code of image2), rows ``B:`` are image.
        """
        b = anatomy.shape[0] // 2
        return self.decode(anatomy, torch.cat([code[b:], code[:b]]))

    def recon_terms(self, x: Tensor, mask: Tensor, enc: Encoded) -> tuple[Tensor, Tensor]:
        """(masked self-reconstruction L1, cross-synthesis L1) for stacked [image; image2]."""
        n, b = x.shape[0], x.shape[0] // 2
        swapped = torch.cat([enc.code[b:], enc.code[:b]])
        # one decoder pass for self and cross: [anatomy; anatomy] with [own code; other code]
        out = self.decode(torch.cat([enc.anatomy, enc.anatomy]), torch.cat([enc.code, swapped])).float()
        x = x.float()
        m = mask.expand_as(x).float()
        self_l1 = ((out[:n] - x).abs() * m).sum() / m.sum().clamp_min(1)
        cross_l1 = (out[n:] - torch.cat([x[b:], x[:b]])).abs().mean()
        return self_l1, cross_l1

    # --- objective ------------------------------------------------------------------------------

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Losses for a batch with "image", "image2", "meta", "meta2", "body_part" (see the spec)."""
        image, image2 = batch["image"], batch["image2"]
        if image.shape != image2.shape:
            raise ValueError(f"image {tuple(image.shape)} and image2 {tuple(image2.shape)} differ in shape")
        b = image.shape[0]
        x = torch.cat([image, image2])
        mask = self.random_mask(x)
        enc = self.encode(self.mask_input(x, mask))
        self_l1, cross_l1 = self.recon_terms(x, mask, enc)
        terms = {
            "recon": self_l1 + cross_l1,
            "meta": meta_l1_loss(self.meta_head(enc.code), torch.cat([batch["meta"], batch["meta2"]])),
            "part": part_ce_loss(self.part_head(enc.pooled), batch["body_part"].long().repeat(2)),
            "contrastive": self.contrastive_loss(*self.contrast_head(enc.pooled).float().split(b)),
        }
        total = sum(self.weights[k] * v for k, v in terms.items())
        return {"loss": total, **terms}

    def encoder_state_dict(self) -> dict[str, Tensor]:
        """Backbone weights as PRISM publishes them: ``swinViT.*``."""
        return self.encoder3d.state_dict()


# --- zoo loader ---------------------------------------------------------------------------------

# PRISM's save_ckpt: {"epoch", "state_dict", "optimizer", …}; other trainers use model / net
_WRAPPERS = ("state_dict", "model", "net")

def _swin_state(sd: dict) -> dict[str, Tensor]:
    """Keys containing ``swinViT.`` with everything before it stripped (PRISM's ``_replce_weight``).

    PRISM's own state dicts hold the backbone twice (``swinViT.*`` and ``D.swinViT.*``, one module
    registered in two places): duplicates are accepted when the tensors are equal.
    """
    out: dict[str, Tensor] = {}
    for k, v in sd.items():
        if not isinstance(k, str) or _VIT_KEY not in k:
            continue
        new = k[k.index(_VIT_KEY):]
        if new in out and not torch.equal(out[new], v):
            raise ValueError(f"checkpoint holds two different tensors for {new!r} (one from {k!r})")
        out[new] = v
    return out


def load_prism_encoder(state: dict | str | Path, name: str = "swin_b_v2", in_channels: int = 1) -> Encoder3d:
    """PRISM backbone weights into an :class:`Encoder3d`, loaded strictly.

    Matches keys by the ``swinViT.`` suffix as PRISM's ``load_pt(model, w, model_vit_key='swinViT')``
    does, so ``swinViT.*``, ``D.swinViT.*``, ``module.backbone.swinViT.*`` … all load.

    Args:
        state: a checkpoint file or dict — raw, or under ``state_dict`` / ``model`` / ``net``.
        name: the Swin configuration of :data:`models.encoders3d.SWIN_CONFIGS`.
        in_channels: input channels of the patch embedding.

    Raises:
        ValueError: no key contains ``swinViT.``; backbone keys missing or unexpected; two
            different tensors for one key. (Shape mismatches raise ``RuntimeError`` from
            ``load_state_dict``.)
    """
    if isinstance(state, (str, Path)):
        state = torch.load(state, map_location="cpu", weights_only=True)
    sd = _swin_state(inner_state(state, _WRAPPERS))
    if not sd:
        raise ValueError(f"no key contains {_VIT_KEY!r}: not a PRISM / SwinUNETR checkpoint "
                         f"(first keys: {list(inner_state(state, _WRAPPERS))[:5]})")
    enc = build_encoder3d(name, in_channels=in_channels)
    expected = set(enc.state_dict())
    missing, unexpected = sorted(expected - set(sd)), sorted(set(sd) - expected)
    if missing or unexpected:
        raise ValueError(f"PRISM checkpoint does not fit {name!r}: {len(missing)} missing "
                         f"{missing[:5]}, {len(unexpected)} unexpected {unexpected[:5]}")
    enc.load_state_dict(sd, strict=True)
    return enc
