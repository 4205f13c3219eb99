"""State-dict converters between SAM's image encoder and the DINOv2 ViT layout.

Pure functions: state dicts in, new state dicts out. Every output tensor is a fresh copy
(inputs are never modified or aliased). Tensors the two layouts share (patch_embed, every
block tensor, the neck when carried along) survive a round trip bit for bit; pos_embed
goes through a bicubic resize and is exact only when the grid does not change.
See docs/models.md for the key mapping.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from segment_anything.modeling import ImageEncoderViT

from mrifoundry.models.sam_encoder import SamEncoderConfig
from mrifoundry.models.vit import resize_pos_grid, unchunk_block_keys

__all__ = ["sam_to_dinov2", "dinov2_to_sam", "load_mri_core_into_sam",
           "resize_sam_encoder_state", "sam_encoder_state"]

_SAM_PREFIX = "image_encoder."
_BLOCK = re.compile(r"^blocks\.(\d+)\.(.+)$")
_SAM_TO_DINO = (("mlp.lin1.", "mlp.fc1."), ("mlp.lin2.", "mlp.fc2."))
_HEADS = ("dino_head.", "ibot_head.")


def _copy(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone()


def _rename(rest: str, pairs: tuple[tuple[str, str], ...]) -> str:
    # whole components only: upstream's str.replace('fc', 'lin') would hit any 'fc'
    for a, b in pairs:
        if rest.startswith(a):
            return b + rest[len(a):]
    return rest


def sam_encoder_state(sam_sd: dict) -> dict:
    """The image-encoder part of a SAM state dict, without the ``image_encoder.`` prefix.

    A full SAM checkpoint (prompt_encoder, mask_decoder …) keeps only ``image_encoder.*``;
    a dict without that prefix is taken to be an encoder state dict already. Not copied.
    """
    if any(k.startswith(_SAM_PREFIX) for k in sam_sd):
        return {k[len(_SAM_PREFIX):]: v for k, v in sam_sd.items() if k.startswith(_SAM_PREFIX)}
    return dict(sam_sd)


def sam_to_dinov2(sam_sd: dict, *, grid: int, keep_neck: bool = False,
                  num_extra_tokens: int = 1) -> dict:
    """SAM image-encoder state dict → DINOv2 ViT state dict (unchunked, no prefix).

    Copied: ``patch_embed.*`` and every block tensor, with ``mlp.lin1/lin2`` renamed
    ``mlp.fc1/fc2``. Resized: ``pos_embed [1,G,G,D]`` → bicubic to ``grid x grid`` →
    ``[1, num_extra_tokens + grid², D]``. Dropped: ``attn.rel_pos_h/w`` (DINOv2 has no
    relative positions) and ``neck.*`` (kept unchanged when ``keep_neck``, so
    :func:`dinov2_to_sam` can restore it). Created, since SAM has no such tensors:

    - ``cls_token [1,1,D]``: zeros (DINOv2 draws N(0, 1e-6²), i.e. zero in practice);
    - the pos_embed cls slot: zeros;
    - ``mask_token [1,D]``: zeros (as DINOv2 initialises it);
    - ``norm.weight`` ones and ``norm.bias`` zeros (LayerNorm's own init).

    Args:
        sam_sd: encoder state dict, optionally ``image_encoder.``-prefixed (a full SAM
            checkpoint's other modules are ignored).
        grid: token grid of the ViT (224 px / patch 16 → 14).
        keep_neck: carry ``neck.*`` through unchanged.
        num_extra_tokens: 1 (cls slot, DINOv2) or 0 (patch positions only, no cls_token).

    Raises:
        ValueError: a key that is not part of SAM's image encoder, or no pos_embed.
    """
    if num_extra_tokens not in (0, 1):
        raise ValueError("num_extra_tokens must be 0 or 1 (no register tokens)")
    sd = sam_encoder_state(sam_sd)
    if "pos_embed" not in sd:
        raise ValueError("SAM state dict has no pos_embed")
    pos = sd["pos_embed"]
    d = pos.shape[-1]
    patch = resize_pos_grid(pos, (grid, grid)).reshape(1, grid * grid, d)
    out: dict[str, torch.Tensor] = {}
    if num_extra_tokens:
        out["cls_token"] = pos.new_zeros(1, 1, d)
    out["pos_embed"] = torch.cat([pos.new_zeros(1, num_extra_tokens, d), patch], dim=1)
    out["mask_token"] = pos.new_zeros(1, d)
    neck = {}
    for k, v in sd.items():
        m = _BLOCK.match(k)
        if k == "pos_embed":
            continue
        if k.startswith("patch_embed."):
            out[k] = _copy(v)
        elif k.startswith("neck."):
            neck[k] = _copy(v)
        elif m:
            rest = m.group(2)
            if rest in ("attn.rel_pos_h", "attn.rel_pos_w"):
                continue
            out[f"blocks.{m.group(1)}.{_rename(rest, _SAM_TO_DINO)}"] = _copy(v)
        else:
            raise ValueError(f"unexpected key in a SAM image-encoder state dict: {k!r}")
    out["norm.weight"] = pos.new_ones(d)
    out["norm.bias"] = pos.new_zeros(d)
    if keep_neck:
        out.update(neck)
    return out


def _fold(w: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    g = gamma.float().reshape((-1,) + (1,) * (w.ndim - 1))
    return (w.float() * g).to(w.dtype)


def dinov2_without_layerscale(dino_sd: dict, *, grid: int) -> dict:
    """A DINOv2 backbone (hub or trainer layout, layerscale on) → the same keys without
    ``ls1/ls2.gamma`` (folded into ``attn.proj`` / ``mlp.fc2``, the block's function unchanged)
    and ``pos_embed`` resized to ``1 + grid²`` positions — what the slice trainer's
    layerscale-free backbone loads (BrainFound starts from a DINOv2 checkpoint).

    Raises:
        ValueError: a gamma without its linear layer, or a pos_embed that is not cls + a square grid.
    """
    sd = unchunk_block_keys(dino_sd)
    if any(k.startswith("backbone.") for k in sd):
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
    out = {k: _copy(v) for k, v in sd.items() if not k.endswith(("ls1.gamma", "ls2.gamma"))}
    for k, g in sd.items():
        m = _BLOCK.match(k)
        if not (m and m.group(2) in ("ls1.gamma", "ls2.gamma")):
            continue
        lin = f"blocks.{m.group(1)}.attn.proj" if m.group(2) == "ls1.gamma" else f"blocks.{m.group(1)}.mlp.fc2"
        for part in ("weight", "bias"):
            if f"{lin}.{part}" not in out:
                raise ValueError(f"{k} has no {lin}.{part} to fold into")
            out[f"{lin}.{part}"] = _fold(out[f"{lin}.{part}"], g)
    pos = out["pos_embed"]
    n = pos.shape[1] - 1
    m_ = math.isqrt(n)
    if m_ * m_ != n:
        raise ValueError(f"pos_embed {tuple(pos.shape)} is not 1 + a square grid")
    patch = resize_pos_grid(pos[:, 1:].reshape(1, m_, m_, -1), (grid, grid)).reshape(1, grid * grid, -1)
    out["pos_embed"] = torch.cat([pos[:, :1], patch], dim=1)
    return out


def dinov2_to_sam(dino_sd: dict, *, grid: int, rel_pos: dict | None = None,
                  neck: dict | None = None, sam_cfg: SamEncoderConfig | None = None) -> dict:
    """DINOv2 ViT state dict → SAM image-encoder state dict (no ``image_encoder.`` prefix).

    Accepts chunked block keys and a ``backbone.`` prefix (``dino_head.*`` / ``ibot_head.*``
    are dropped). Copied: ``patch_embed.*`` and block tensors, with ``mlp.fc1/fc2`` renamed
    ``mlp.lin1/lin2``. Dropped: ``cls_token``, ``mask_token``, ``norm.*`` and the pos_embed
    cls slot. LayerScale ``ls1/ls2.gamma`` are folded into ``attn.proj`` / ``mlp.lin2``
    (weight rows and bias scaled by gamma), which keeps each block's function.
    ``pos_embed`` patch part ``[1,N,D]`` → bicubic to ``[1,grid,grid,D]``.

    Args:
        dino_sd: DINOv2 backbone state dict.
        grid: SAM token grid (1024 px / 16 → 64).
        rel_pos: tables by SAM key (``blocks.{i}.attn.rel_pos_h``); a full SAM state dict
            works (other keys are ignored).
        neck: ``neck.*`` tensors (a full SAM state dict works); default: ``neck.*`` keys
            carried in ``dino_sd`` (see ``keep_neck``), else no neck keys.
        sam_cfg: the target encoder. With ``use_rel_pos`` every table is taken from
            ``rel_pos`` or created as zeros of SAM's shape (SAM's own init); without it
            no table is written. When None, only tables in ``rel_pos`` are written.

    Raises:
        ValueError: unknown keys, a non-square pos_embed, a grid that does not match
            ``sam_cfg``, or ``rel_pos`` given for a config without relative positions.
    """
    sd = unchunk_block_keys(dino_sd)
    if any(k.startswith("backbone.") for k in sd):
        kept = {}
        for k, v in sd.items():
            if k.startswith("backbone."):
                kept[k[len("backbone."):]] = v
            elif k.startswith("neck."):
                kept[k] = v
            elif not k.startswith(_HEADS):
                raise ValueError(f"unexpected key beside backbone.*: {k!r}")
        sd = kept
    if sam_cfg is not None and sam_cfg.grid != grid:
        raise ValueError(f"grid {grid} does not match sam_cfg's {sam_cfg.grid}")
    if "pos_embed" not in sd:
        raise ValueError("DINOv2 state dict has no pos_embed")

    out: dict[str, torch.Tensor] = {}
    gammas: dict[str, torch.Tensor] = {}
    carried_neck: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = _BLOCK.match(k)
        if k in ("cls_token", "mask_token", "pos_embed", "norm.weight", "norm.bias") \
                or k.startswith(_HEADS):
            continue
        if k.startswith("patch_embed."):
            out[k] = _copy(v)
        elif k.startswith("neck."):
            carried_neck[k] = v
        elif m and m.group(2) in ("ls1.gamma", "ls2.gamma"):
            gammas[k] = v
        elif m:
            rest = _rename(m.group(2), tuple((b, a) for a, b in _SAM_TO_DINO))
            out[f"blocks.{m.group(1)}.{rest}"] = _copy(v)
        else:
            raise ValueError(f"unexpected key in a DINOv2 state dict: {k!r}")
    # x + ls * (W y + b) == x + (diag(ls) W) y + ls * b
    for k, g in gammas.items():
        i, which = _BLOCK.match(k).groups()
        lin = f"blocks.{i}.attn.proj" if which == "ls1.gamma" else f"blocks.{i}.mlp.lin2"
        for part in ("weight", "bias"):
            if f"{lin}.{part}" not in out:
                raise ValueError(f"{k} has no {lin}.{part} to fold into")
            out[f"{lin}.{part}"] = _fold(out[f"{lin}.{part}"], g)

    pos = sd["pos_embed"]
    extra = 1 if "cls_token" in sd else 0
    n = pos.shape[1] - extra
    m_ = math.isqrt(n)
    if m_ * m_ != n:
        raise ValueError(f"pos_embed {tuple(pos.shape)} is not {extra} + a square grid")
    patch = pos[:, extra:].reshape(1, m_, m_, pos.shape[-1])
    out["pos_embed"] = resize_pos_grid(patch, (grid, grid))

    tables = {k: v for k, v in sam_encoder_state(rel_pos or {}).items()
              if k.endswith(("attn.rel_pos_h", "attn.rel_pos_w"))}
    if sam_cfg is not None and not sam_cfg.use_rel_pos:
        if tables:
            raise ValueError("rel_pos given but sam_cfg.use_rel_pos is False")
    elif sam_cfg is not None:
        head_dim = sam_cfg.embed_dim // sam_cfg.num_heads
        for i in range(sam_cfg.depth):
            size = 2 * (grid if i in sam_cfg.global_attn_indexes else sam_cfg.window_size) - 1
            for ax in ("h", "w"):
                k = f"blocks.{i}.attn.rel_pos_{ax}"
                out[k] = _copy(tables[k]) if k in tables else pos.new_zeros(size, head_dim)
    else:
        out.update({k: _copy(v) for k, v in tables.items()})

    src = sam_encoder_state(neck) if neck is not None else carried_neck
    out.update({k: _copy(v) for k, v in src.items() if k.startswith("neck.")})
    return out


def resize_sam_encoder_state(sam_sd: dict, cfg: SamEncoderConfig) -> dict:
    """Adapt a SAM encoder state dict to ``cfg.img_size``.

    pos_embed is resized bicubically to ``cfg.grid``; the global-attention blocks'
    rel_pos tables linearly to ``2*grid-1`` (what SAM's ``get_rel_pos`` does at run time
    when sizes differ); windowed tables do not depend on the image size. Returns copies.
    """
    sd = {k: _copy(v) for k, v in sam_encoder_state(sam_sd).items()}
    sd["pos_embed"] = resize_pos_grid(sd["pos_embed"], (cfg.grid, cfg.grid))
    size = 2 * cfg.grid - 1
    for i in cfg.global_attn_indexes:
        for ax in ("h", "w"):
            k = f"blocks.{i}.attn.rel_pos_{ax}"
            if k in sd and sd[k].shape[0] != size:
                t = sd[k]
                r = F.interpolate(t.float().t()[None], size=size, mode="linear")
                sd[k] = r[0].t().to(t.dtype).contiguous()
    return sd


def _unwrap_checkpoint(ckpt: dict) -> dict:
    # the order upstream unwraps in (mri_foundation build_sam.py)
    for key in ("model", "teacher", "student"):
        if isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
    return ckpt


def load_mri_core_into_sam(ckpt: dict, encoder: ImageEncoderViT, *, sam_init: dict | None = None,
                           reproduce_upstream_bug: bool = False) -> list[str]:
    """Load an MRI-CORE teacher checkpoint into SAM's image encoder, pos_embed included.

    The backbone is converted with :func:`dinov2_to_sam` at the encoder's token grid, so the
    checkpoint's 14x14 pos_embed is bicubically resized into ``encoder.pos_embed`` (upstream
    stored it under the wrong key and it was never loaded). Encoder tensors the checkpoint
    lacks (neck, rel_pos) come from ``sam_init`` (a SAM state dict at the encoder's size)
    when given; the rest is left as it is and reported.

    Args:
        ckpt: ``{"teacher": {"backbone.*", "dino_head.*"}}``; ``model`` / ``student``
            wrappers and a bare backbone dict are accepted too.
        encoder: target encoder, modified in place.
        sam_init: SAM weights for the tensors MRI-CORE does not have.
        reproduce_upstream_bug: leave pos_embed as upstream did: from ``sam_init`` when
            given, else untouched (all zeros on a freshly built encoder).

    Returns:
        Encoder keys that were not written (e.g. ``neck.*`` without ``sam_init``).

    Raises:
        ValueError: keys the encoder does not have, or shape mismatches.
    """
    sd = _unwrap_checkpoint(ckpt)
    if any(k.startswith("backbone.") for k in sd):
        sd = {k: v for k, v in sd.items() if k.startswith("backbone.")}
    if encoder.pos_embed is None:
        raise ValueError("encoder has no absolute pos_embed")
    new = dinov2_to_sam(sd, grid=encoder.pos_embed.shape[1])
    if reproduce_upstream_bug:
        del new["pos_embed"]
    target = encoder.state_dict()
    if sam_init is not None:
        init = sam_encoder_state(sam_init)
        new.update({k: _copy(init[k]) for k in target if k not in new and k in init})
    unexpected = sorted(set(new) - set(target))
    if unexpected:
        raise ValueError(f"keys not in the encoder: {unexpected[:8]}")
    bad = [f"{k}: {tuple(v.shape)} vs {tuple(target[k].shape)}" for k, v in new.items()
           if v.shape != target[k].shape]
    if bad:
        raise ValueError(f"shape mismatch: {bad[:8]}")
    encoder.load_state_dict(new, strict=False)
    return [k for k in target if k not in new]
