"""The one training loop of the 3D evaluations (segmentation fine-tuning, classification
fine-tuning and its linear probe): AdamW over parameter groups (head at ``lr``, encoder at
``encoder_lr``: :func:`models.seg3d.param_groups`), a linear warm-up then cosine decay,
``iterations`` steps, random flips, bf16 autocast on CUDA when ``cfg.amp``. Without a
``validate`` hook the last weights are the result; with one, the model is scored every
``val_every`` steps (and after the last) and the best-scoring weights are loaded at the end
(segmentation fine-tuning: mean validation DSC; BrainSegFounder's trainer keeps its best
validation Dice the same way, a strictly higher score replacing the kept one).

Seeding: the loop's numpy generator (batch picks, flips) is ``default_rng(cfg.seed)``; the torch
RNG (weight init, dropout) is the caller's to seed, since what the callers seed spans more than
the loop (the classifier's head init comes before it).

Pretraining has its own loop (tasks/pretraining/engine.py: DDP, EMA teacher, checkpoints to
resume); this one is single-process and keeps nothing but the curve.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from mrifoundry.models.seg3d import param_groups

__all__ = ["autocast_for", "device_for", "train_loop", "warmup_cosine"]

#: a batch ``(x [B, C, X, Y, Z], y)`` drawn with the loop's generator
BatchFn = Callable[[np.random.Generator], "tuple[torch.Tensor, torch.Tensor]"]


def warmup_cosine(iteration: int, total: int, warmup: int) -> float:
    """LR factor: linear warm-up ``(t+1)/W`` for t < W, then cosine from 1 to 0 over the rest."""
    if iteration < warmup:
        return (iteration + 1) / warmup
    span = max(total - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(iteration - warmup, span) / span))


def device_for(cfg) -> torch.device:
    """``cfg.device``, else cuda when available, else cpu."""
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


def autocast_for(dev: torch.device, cfg):
    """bf16 autocast on CUDA when ``cfg.amp``; a no-op elsewhere."""
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=bool(cfg.amp and dev.type == "cuda"))


def train_loop(model: nn.Module, batch: BatchFn, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
               cfg, dev: torch.device, *, flip: bool, flip_target: bool = False, groups: list[dict] | None = None,
               progress: Callable[[str], None] | None = None, validate: Callable[[int], float] | None = None,
               val_every: int = 0) -> dict[str, Any]:
    """Train ``model`` (already on ``dev``) in place for ``cfg.iterations`` steps.

    Args:
        model: the network; its logits are cast to float32 for ``loss_fn(logits, y)``.
        batch: draws one batch with the loop's generator (called once per step, before the flips).
        loss_fn: the loss of (float32 logits, target on ``dev``).
        cfg: a config with ``iterations``, ``lr``, ``encoder_lr``, ``weight_decay``,
            ``warmup_iters``, ``seed``, ``amp``.
        dev: where the batches go.
        flip: flip each spatial axis of ``x`` with probability ½ (one draw per axis and step);
            ``flip_target``: the target too (a label map).
        groups: optimiser groups; None: :func:`param_groups` of ``model`` (needs ``model.encoder``).
        progress: called with a line about every 5 % of the steps.
        validate: called with the step count after every ``val_every``-th step and after the last,
            returns a score (higher is better; NaN counts as the worst); leaves RNG and weights alone
            (the loop puts the model back in train mode after it). None or ``val_every`` < 1: no validation.

    Returns:
        ``{"loss": [...], "lr": [...]}`` per step (``lr`` of the first group); with validation also
        ``"val"`` ([step, score] pairs), ``"best_iteration"`` and ``"best_val"`` (the first step with
        the highest score, whose weights — copied to the CPU when scored — the model holds on return).
    """
    groups = param_groups(model, cfg.lr, cfg.encoder_lr) if groups is None else groups
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    base = [g["lr"] for g in groups]
    rng = np.random.default_rng(cfg.seed)
    curve: dict[str, list] = {"loss": [], "lr": []}
    n, every = cfg.iterations, max(1, cfg.iterations // 20)
    checking = validate is not None and val_every > 0
    if checking:
        curve["val"] = []
    best: tuple[float, int, dict] | None = None
    model.train()
    for it in range(n):
        x, y = batch(rng)
        if flip:
            axes = [2 + a for a in range(3) if rng.random() < 0.5]
            if axes:
                x = x.flip(axes)
                y = y.flip(axes) if flip_target else y
        f = warmup_cosine(it, n, cfg.warmup_iters)
        for g, lr in zip(opt.param_groups, base):
            g["lr"] = lr * f
        with autocast_for(dev, cfg):
            logits = model(x.to(dev))
        loss = loss_fn(logits.float(), y.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve["loss"].append(float(loss.item()))
        curve["lr"].append(base[0] * f)
        if progress is not None and ((it + 1) % every == 0 or it + 1 == n):
            progress(f"iteration {it + 1}/{n} loss {curve['loss'][-1]:.4f} lr {curve['lr'][-1]:.2e}")
        if checking and ((it + 1) % val_every == 0 or it + 1 == n):
            score = float(validate(it + 1))
            model.train()
            curve["val"].append([it + 1, score])
            key = score if math.isfinite(score) else -math.inf
            if best is None or key > best[0]:   # strictly higher: the first of equal scores is kept
                best = (key, it + 1, {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
            if progress is not None:
                progress(f"validation at iteration {it + 1}: {score:.4f} (best at {best[1]})")
    if best is not None:
        model.load_state_dict(best[2])
        curve["best_iteration"] = best[1]
        curve["best_val"] = next(s for i, s in curve["val"] if i == best[1])
    return curve
