"""Per-iteration schedules of a DINOv2 run (lr, weight decay, teacher momentum and temperature).

``cosine_schedule`` follows DINOv2's ``CosineScheduler``: ``freeze_iters`` zeros, a linear
warm-up from ``start_warmup`` that ends *on* ``base`` (``np.linspace`` includes the end
point), then a half cosine from ``base`` towards ``final`` over the remaining iterations;
indexing past the end gives ``final``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Schedules", "build_schedules", "cosine_schedule"]


def cosine_schedule(base: float, final: float, total_iters: int, warmup_iters: int = 0, start_warmup: float = 0.0,
                    freeze_iters: int = 0) -> np.ndarray:
    """Values for iterations ``0 .. total_iters-1``.

    Raises:
        ValueError: when freeze + warm-up exceed ``total_iters`` or any count is negative.
    """
    if min(total_iters, warmup_iters, freeze_iters) < 0:
        raise ValueError("iteration counts must be non-negative")
    n_cos = total_iters - warmup_iters - freeze_iters
    if n_cos < 0:
        raise ValueError(f"freeze ({freeze_iters}) + warm-up ({warmup_iters}) exceed total_iters ({total_iters})")
    t = np.arange(n_cos) / max(n_cos, 1)
    return np.concatenate([
        np.zeros(freeze_iters),
        np.linspace(start_warmup, base, warmup_iters),
        final + 0.5 * (base - final) * (1.0 + np.cos(np.pi * t)),
    ])


_NAMES = ("lr", "wd", "momentum", "teacher_temp", "last_layer_lr")


@dataclass
class Schedules:
    """Every per-iteration value of a run, one array of length ``total_iters`` each.

    ``finals`` holds what ``at`` returns past the end (the schedules' final values).
    """

    lr: np.ndarray
    wd: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    last_layer_lr: np.ndarray
    finals: dict[str, float]

    @property
    def total_iters(self) -> int:
        return len(self.lr)

    def at(self, it: int) -> dict[str, float]:
        """``{"lr", "wd", "momentum", "teacher_temp", "last_layer_lr"}`` at iteration ``it``."""
        if it < 0:
            raise ValueError(f"iteration must be non-negative, got {it}")
        if it >= self.total_iters:
            return dict(self.finals)
        return {name: float(getattr(self, name)[it]) for name in _NAMES}


def build_schedules(total_iters: int, iters_per_epoch: int, base_lr: float, min_lr: float = 1e-6,
                    warmup_epochs: float = 10, wd: tuple[float, float] = (0.04, 0.4),
                    momentum: tuple[float, float] = (0.992, 1.0), teacher_temp: tuple[float, float] = (0.04, 0.07),
                    teacher_temp_warmup_epochs: float = 30, freeze_last_layer_epochs: float = 1) -> Schedules:
    """DINOv2's schedules for a run of ``total_iters`` iterations.

    Epoch counts may be fractional (short runs) and are converted with ``iters_per_epoch``.
    An lr warm-up or last-layer freeze longer than the run is cut to the run; the teacher
    temperature ramp is truncated instead (same slope).

    Args:
        total_iters: iterations in the run.
        iters_per_epoch: iterations per epoch.
        base_lr: peak lr (already scaled for the batch size).
        min_lr: final lr.
        warmup_epochs: linear lr warm-up from 0.
        wd: weight decay (start, end), cosine.
        momentum: teacher EMA momentum (start, end), cosine.
        teacher_temp: teacher temperature (start, end): linear warm-up then constant.
        teacher_temp_warmup_epochs: length of that warm-up.
        freeze_last_layer_epochs: iterations where the head's last layer gets lr 0.
    """
    if total_iters < 1 or iters_per_epoch < 1:
        raise ValueError(f"need total_iters, iters_per_epoch >= 1, got {total_iters}, {iters_per_epoch}")

    def iters(epochs: float) -> int:
        return min(total_iters, max(0, int(round(epochs * iters_per_epoch))))

    lr = cosine_schedule(base_lr, min_lr, total_iters, warmup_iters=iters(warmup_epochs))
    last_layer_lr = lr.copy()
    last_layer_lr[: iters(freeze_last_layer_epochs)] = 0.0
    # the temperature ramp keeps its slope when longer than the run (DINOv2 indexes it per
    # iteration), so a short run ends below the final temperature
    warm_t = max(0, int(round(teacher_temp_warmup_epochs * iters_per_epoch)))
    temp = np.concatenate([np.linspace(teacher_temp[0], teacher_temp[1], warm_t),
                           np.full(max(0, total_iters - warm_t), teacher_temp[1])])[:total_iters]
    return Schedules(
        lr=lr,
        wd=cosine_schedule(wd[0], wd[1], total_iters),
        momentum=cosine_schedule(momentum[0], momentum[1], total_iters),
        teacher_temp=temp,
        last_layer_lr=last_layer_lr,
        finals={"lr": min_lr, "wd": wd[1], "momentum": momentum[1], "teacher_temp": teacher_temp[1],
                "last_layer_lr": min_lr},
    )
