"""BrainSegFounder's self-supervised pretraining on MONAI's SwinUNETR backbone, and its loaders.

BrainSegFounder (Cox et al.; lab-smile/BrainSegFounder, GPL-3.0 — implemented here from the
paper and its description, not from its code) keeps SwinUNETR's pretraining recipe: a MONAI
``SwinTransformer`` called ``swinViT`` and three proxy tasks on its deepest output —

- rotation: a linear head predicts which of 0/90/180/270° the view was turned by;
- contrastive: a linear head embeds each view; NT-Xent (T = 0.5) pulls two views of one
  volume together;
- reconstruction: a small convolutional decoder restores the rotated view from its
  cuboid-dropped version (L1).

Two views are made per volume, each by :func:`random_rotation` then :func:`cuboid_dropout`;
the total loss is ``w1·rotation + w2·contrastive + w3·reconstruction`` (all weights 1 in the
paper). Module names follow the published checkpoint (``swinViT``, inside ``encoder3d``;
``rotation_head``, ``contrastive_head``, ``conv``), so :meth:`BrainSegFounderPretrainer.encoder_state_dict` and
the loaders speak the ``module.swinViT.*`` layout of ``model_bestValRMSE.pt``.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mrifoundry.models.checkpoints import inner_state
from mrifoundry.models.encoders3d import SWIN_CONFIGS, Encoder3d, build_encoder3d
from mrifoundry.models.ssl3d.losses3d import nt_xent

__all__ = ["ROTATION_DIMS", "BrainSegFounderPretrainer", "cuboid_dropout", "load_brainsegfounder_encoder",
           "load_into_swinunetr", "random_rotation", "rotate_volumes"]

# The paper turns each sample x[i] ([C, H, W, D]) in its dims (2, 3): the (W, D) plane, which
# is dims (3, 4) of the [B, C, H, W, D] batch.
ROTATION_DIMS: tuple[int, int] = (3, 4)
_MIN_BLOCK = 0.05  # smallest cuboid side, as a fraction of the volume's side (the paper's tolerance)


# --------------------------------------------------------------------------- augmentations

def rotate_volumes(x: torch.Tensor, k: torch.Tensor, dims: tuple[int, int] = ROTATION_DIMS) -> torch.Tensor:
    """Turn sample ``i`` of ``x`` ([B, C, *spatial]) by ``k[i]``·90° in the batch dims ``dims``.

    ``k`` is taken modulo 4. Raises ValueError when ``k`` does not hold one value per sample,
    or a quarter turn is asked of a plane that is not square.
    """
    if k.shape != (x.shape[0],):
        raise ValueError(f"k must hold one turn per sample ({x.shape[0]}), got shape {tuple(k.shape)}")
    if min(dims) < 2:
        raise ValueError(f"rotation dims must be spatial (≥ 2 in [B, C, …]), got {dims}")
    turns = [int(t) % 4 for t in k.cpu()]
    if x.shape[dims[0]] != x.shape[dims[1]] and any(t % 2 for t in turns):
        raise ValueError(f"a quarter turn needs a square plane; dims {dims} of {tuple(x.shape)} differ")
    sample_dims = (dims[0] - 1, dims[1] - 1)
    return torch.stack([torch.rot90(x[i], t, sample_dims) for i, t in enumerate(turns)])


def random_rotation(x: torch.Tensor, dims: tuple[int, int] = ROTATION_DIMS) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn every sample by a random multiple of 90° → ``(rotated, k)``, k int64 [B] on x's device.

    ``k`` is drawn from torch's global (CPU) generator, so seeding torch makes it reproducible.
    """
    k = torch.randint(0, 4, (x.shape[0],))
    return rotate_volumes(x, k, dims), k.to(x.device)


def _random_cuboid(spatial: Sequence[int], max_block: float) -> tuple[slice, ...]:
    """A cuboid inside the volume, each side in [5 %, max_block] of the volume's side."""
    sides = []
    for s in spatial:
        lo = max(1, int(_MIN_BLOCK * s))
        hi = max(lo, int(max_block * s))
        size = int(torch.randint(lo, hi + 1, ()))
        start = int(torch.randint(0, s - size + 1, ()))
        sides.append(slice(start, start + size))
    return tuple(sides)


def _cuboid_mask(spatial: Sequence[int], fraction: float, max_block: float) -> torch.Tensor:
    """Union of random cuboids, added until at least ``fraction`` of the voxels are covered (CPU, bool)."""
    mask = torch.zeros(tuple(spatial), dtype=torch.bool)
    target, covered = fraction * mask.numel(), 0
    while covered < target:
        block = _random_cuboid(spatial, max_block)
        covered += mask[block].numel() - int(mask[block].sum())
        mask[block] = True
    return mask


@torch.no_grad()
def cuboid_dropout(x: torch.Tensor, max_fraction: float = 0.3, max_block: float = 0.25,
                   swap: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The corruption of the reconstruction task (SwinUNETR's masked volume inpainting).

    Per sample, a target fraction is drawn uniformly in ``[0, max_fraction)`` and random
    cuboids (each side between 5 % and ``max_block`` of the volume's side, all channels) are
    filled with Gaussian noise of the sample's per-channel mean and std until that fraction is
    covered — so at most ``max_fraction`` plus the last cuboid. With ``swap`` (as the paper),
    a partner is then drawn uniformly from the batch and, if it is another sample, a second
    such pass copies the partner's voxels into new cuboids (up to about twice
    ``max_fraction`` in all).

    Departures from the paper's code, none of which changes what the task asks of the model:
    the coverage counts distinct voxels (the paper adds nominal block sizes, overlaps
    twice); cuboids lie inside the volume (the paper's may be clipped by its edge); the noise
    has the sample's mean/std (the paper min-max scales each block's noise to [0, 1]).
    Randomness comes from torch's global generators.

    Returns:
        ``(x_dropped, mask)``: a new tensor like ``x``, and bool ``[B, 1, *spatial]`` marking
        every overwritten voxel.
    """
    if x.ndim < 3:
        raise ValueError(f"cuboid_dropout expects [B, C, *spatial], got shape {tuple(x.shape)}")
    if not 0.0 <= max_fraction < 1.0 or not 0.0 < max_block <= 1.0:
        raise ValueError(f"need 0 ≤ max_fraction < 1 and 0 < max_block ≤ 1, got {max_fraction}, {max_block}")
    b, spatial = x.shape[0], x.shape[2:]
    voxels = tuple(range(2, x.ndim))
    mean = x.detach().float().mean(dim=voxels, keepdim=True)
    std = x.detach().float().std(dim=voxels, keepdim=True)
    out = x.detach().clone()
    masks = []
    for i in range(b):
        mask = _cuboid_mask(spatial, float(torch.rand(())) * max_fraction, max_block).to(x.device)
        noise = torch.randn(x.shape[1:], device=x.device) * std[i] + mean[i]
        out[i] = torch.where(mask, noise.to(out.dtype), out[i])
        if swap:
            j = int(torch.randint(0, b, ()))
            if j != i:
                swapped = _cuboid_mask(spatial, float(torch.rand(())) * max_fraction, max_block).to(x.device)
                out[i] = torch.where(swapped, out[j], out[i])
                mask |= swapped
        masks.append(mask)
    return out, torch.stack(masks).unsqueeze(1)


# --------------------------------------------------------------------------- model

class _SingleVoxelSafeInstanceNorm3d(nn.InstanceNorm3d):
    """Instance norm that passes a one-voxel map through unchanged.

    The decoder starts at the encoder's /32 map: 3³ at the paper's 96³ crops, but a single
    voxel at 32³, where the statistics are undefined (torch raises in training). Only tests
    and demos use such crops; at ≥ 64³ this is plain ``InstanceNorm3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[2:].numel() == 1:
            return x
        return super().forward(x)


def _reconstruction_decoder(dim: int, out_channels: int) -> nn.Sequential:
    """/32 map → full-size volume: 5 × (3³ conv, instance norm, leaky ReLU, ×2 trilinear
    upsampling), channels halving from ``dim`` to ``dim/16``, then a 1³ conv to the image's
    channels. A flat ``Sequential`` so its keys (``0.weight`` … ``20.weight``) read as the
    published ``conv.*``."""
    if dim % 16:
        raise ValueError(f"the decoder halves the channels 4 times; {dim} is not divisible by 16")
    widths = [dim, dim // 2, dim // 4, dim // 8, dim // 16, dim // 16]
    layers: list[nn.Module] = []
    for c_in, c_out in zip(widths, widths[1:]):
        layers += [nn.Conv3d(c_in, c_out, 3, padding=1), _SingleVoxelSafeInstanceNorm3d(c_out), nn.LeakyReLU(),
                   nn.Upsample(scale_factor=2, mode="trilinear", align_corners=False)]
    layers.append(nn.Conv3d(widths[-1], out_channels, 1))
    return nn.Sequential(*layers)


def _head_tokens(deep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rotation head's and the contrastive head's inputs: tokens 0 and 1 of the flattened
    deepest map (the paper's; 27 tokens at 96³). A single-token map (32³ crops) feeds its one
    token to both."""
    tokens = deep.flatten(2).transpose(1, 2)  # [B, N, C]
    return tokens[:, 0], tokens[:, min(1, tokens.shape[1] - 1)]


class BrainSegFounderPretrainer(nn.Module):
    """Rotation + contrastive + reconstruction pretraining of a MONAI Swin encoder.

    Args:
        encoder: a :data:`models.encoders3d.SWIN_CONFIGS` name — ``"swin_b"`` (the paper:
            embed 48, depths 2-2-2-2, heads 3-6-12-24, window 7, v1 blocks) or ``"swin_tiny"``.
        in_channels: image channels (1 for T1 or T2, 2 for the paper's T1T2).
        roi: crop side, a multiple of 32 (96 in the paper).
        contrastive_dim: contrastive embedding width (512).
        temperature: NT-Xent temperature (0.5).
        weights: (rotation, contrastive, reconstruction) loss weights.

    Attributes ``encoder3d`` (the :class:`Encoder3d`), ``rotation_head``,
    ``contrastive_head`` and ``conv`` (the reconstruction decoder). Every parameter takes
    part in every forward.
    """

    def __init__(self, encoder: str = "swin_b", in_channels: int = 1, roi: int = 96, contrastive_dim: int = 512,
                 temperature: float = 0.5, weights: Sequence[float] = (1.0, 1.0, 1.0)):
        super().__init__()
        if encoder not in SWIN_CONFIGS:
            raise ValueError(f"BrainSegFounder pretrains a Swin encoder; got {encoder!r}, known: {list(SWIN_CONFIGS)}")
        if roi % 32:
            raise ValueError(f"roi must be a multiple of 32 (the Swin's /32 map), got {roi}")
        if len(weights) != 3:
            raise ValueError(f"weights are (rotation, contrastive, reconstruction), got {weights}")
        self.roi, self.in_channels, self.temperature = roi, in_channels, temperature
        self.weights = tuple(float(w) for w in weights)
        self.encoder3d: Encoder3d = build_encoder3d(encoder, in_channels=in_channels)
        dim = self.encoder3d.channels[-1]
        self.rotation_head = nn.Linear(dim, 4)
        self.contrastive_head = nn.Linear(dim, contrastive_dim)
        self.conv = _reconstruction_decoder(dim, in_channels)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``x`` → (rotation logits [B, 4], contrastive embedding [B, D], reconstruction like x)."""
        deep = self.encoder3d(x)[-1]
        rot_in, con_in = _head_tokens(deep)
        return self.rotation_head(rot_in), self.contrastive_head(con_in), self.conv(deep)

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Two rotated, cuboid-dropped views of ``batch["image"]`` → the weighted losses."""
        x = batch["image"]
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected image [B, {self.in_channels}, R, R, R], got {tuple(x.shape)}")
        b = x.shape[0]
        rotated, turns, dropped = [], [], []
        for _ in range(2):
            view, k = random_rotation(x)
            rotated.append(view)
            turns.append(k)
            dropped.append(cuboid_dropout(view)[0])
        # one pass over both views: every layer normalises per sample, so this equals two passes
        rot_logits, emb, recon = self.heads(torch.cat(dropped))
        rotation = F.cross_entropy(rot_logits.float(), torch.cat(turns))
        contrastive = nt_xent(emb[:b], emb[b:], self.temperature)
        reconstruction = F.l1_loss(recon.float(), torch.cat(rotated).float())
        w_rot, w_con, w_rec = self.weights
        loss = w_rot * rotation + w_con * contrastive + w_rec * reconstruction
        return {"loss": loss, "rotation": rotation, "contrastive": contrastive, "reconstruction": reconstruction}

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder as ``swinViT.*`` — what MONAI ``SwinUNETR`` holds (the published file adds ``module.``)."""
        return self.encoder3d.state_dict()


# --------------------------------------------------------------------------- loaders

def _show(keys: Sequence[str], limit: int = 6) -> str:
    keys = list(keys)
    more = f" … (+{len(keys) - limit})" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _swin_state(state: Mapping | str | Path) -> dict[str, torch.Tensor]:
    """The ``swinViT.*`` tensors of a checkpoint, prefix removed.

    Accepts a path or a dict: the published ``{'state_dict': {'module.swinViT.*', …}}``,
    a ``{'model': …}`` wrapper (our resume checkpoint: ``encoder3d.swinViT.*``), or bare
    ``swinViT.*`` / ``module.swinViT.*`` keys; other keys (heads, decoder, SwinUNETR's
    segmentation part) are ignored.
    """
    if isinstance(state, (str, Path)):
        state = torch.load(state, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise TypeError(f"expected a checkpoint dict or path, got {type(state).__name__}")
    state = inner_state(state, ("state_dict", "model"))
    flat = {k.removeprefix("module.").removeprefix("encoder3d."): v for k, v in state.items()}
    swin = {k.removeprefix("swinViT."): v for k, v in flat.items() if k.startswith("swinViT.")}
    if not swin:
        raise ValueError("no swinViT weights found: expected BrainSegFounder's 'module.swinViT.*' (under "
                         f"'state_dict') or 'swinViT.*' keys; the checkpoint starts with {_show(sorted(flat))}")
    return swin


def _load_strict(module: nn.Module, state: Mapping[str, torch.Tensor], skip: Sequence[str] = ()) -> None:
    """Load ``state`` into ``module``; every key but ``skip`` must be present, known and of its shape."""
    own = module.state_dict()
    missing = [k for k in own if k not in state and k not in skip]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} ≠ {tuple(own[k].shape)}"
              for k in own if k in state and k not in skip and state[k].shape != own[k].shape]
    if missing or unexpected or shapes:
        parts = [f"{name} ({len(keys)}): {_show(keys)}"
                 for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes))
                 if keys]
        raise ValueError("swinViT weights do not fit the model (check the encoder config, in_channels and "
                         "window size): " + "; ".join(parts))
    module.load_state_dict({k: (own[k] if k in skip else state[k]) for k in own}, strict=True)


def load_brainsegfounder_encoder(state: Mapping | str | Path, name: str = "swin_b",
                                 in_channels: int = 1) -> Encoder3d:
    """A BrainSegFounder (or our :class:`BrainSegFounderPretrainer`) checkpoint → :class:`Encoder3d`.

    Args:
        state: ``model_bestValRMSE.pt`` (``{'global_step', 'epoch', 'state_dict':
            {'module.swinViT.*', 'module.rotation_head.*', 'module.contrastive_head.*',
            'module.conv.*'}, 'optimizer'}``), its path, or a ``swinViT.*`` dict such as
            :meth:`BrainSegFounderPretrainer.encoder_state_dict`.
        name: the :data:`~models.encoders3d.SWIN_CONFIGS` entry the weights were trained with.
        in_channels: the checkpoint's image channels.

    Raises:
        ValueError: no ``swinViT`` keys, or any missing, unexpected or mis-shaped key.
    """
    if name not in SWIN_CONFIGS:
        raise ValueError(f"BrainSegFounder weights are a Swin encoder; {name!r} is not one of {list(SWIN_CONFIGS)}")
    encoder = build_encoder3d(name, in_channels=in_channels)
    _load_strict(encoder.swinViT, _swin_state(state))
    return encoder


def load_into_swinunetr(model: nn.Module, state: Mapping | str | Path,
                        skip_patch_embed_if_channels_differ: bool = True) -> list[str]:
    """Copy pretrained ``swinViT`` weights into a MONAI ``SwinUNETR`` for fine-tuning.

    As BrainSegFounder's fine-tuning does: when the checkpoint's input channels differ from
    the model's (a 1-channel pretrain into a 4-channel BraTS model), the pretrained
    ``patch_embed`` is skipped and the model's fresh one kept. Every other ``swinViT`` tensor
    must match by name and shape; the decoder of the ``SwinUNETR`` is left untouched.

    Returns:
        The model's keys that were skipped (``swinViT.patch_embed.*``, or empty).

    Raises:
        ValueError: the channels differ and skipping is off, or any other key is missing,
        unexpected or mis-shaped (e.g. another window size or depth).
    """
    target = getattr(model, "swinViT", None)
    if not isinstance(target, nn.Module):
        raise TypeError(f"expected a MONAI SwinUNETR (with a .swinViT), got {type(model).__name__}")
    state = _swin_state(state)
    key = "patch_embed.proj.weight"
    own = target.state_dict()
    skip: list[str] = []
    if key in state and key in own and state[key].shape[1] != own[key].shape[1]:
        if not skip_patch_embed_if_channels_differ:
            raise ValueError(f"the checkpoint has {state[key].shape[1]} input channels, the model "
                             f"{own[key].shape[1]}; pass skip_patch_embed_if_channels_differ=True to keep the "
                             "model's patch embedding")
        skip = [k for k in own if k.startswith("patch_embed.")]
    _load_strict(target, state, skip)
    return [f"swinViT.{k}" for k in skip]
