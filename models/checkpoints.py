"""Reading the weights out of the checkpoint files trainers write.

Trainers wrap their state dict under a key (``model``, ``state_dict``, ``teacher`` …),
sometimes twice (PRISM: ``{"state_dict": {"model": …}}``); DDP adds a ``module.`` prefix.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

__all__ = ["inner_state", "load_state"]


def inner_state(ckpt: Mapping, keys: Sequence[str] = ("model", "state_dict")) -> dict:
    """The dict under the first of ``keys`` that holds one, descending while one does."""
    if not isinstance(ckpt, Mapping):
        raise TypeError(f"expected a checkpoint dict, got {type(ckpt).__name__}")
    while True:
        inner = next((ckpt[k] for k in keys if isinstance(ckpt.get(k), Mapping)), None)
        if inner is None:
            return dict(ckpt)
        ckpt = inner


def load_state(source: Mapping | str | Path, keys: Sequence[str] = ("model", "state_dict"),
               strip: str | None = None) -> dict:
    """``inner_state`` of a checkpoint file (tensors only, no pickled code) or of a dict;
    ``strip`` removes a key prefix (``module.`` of a DDP-wrapped save)."""
    if isinstance(source, (str, Path)):
        source = torch.load(source, map_location="cpu", weights_only=True)
    sd = inner_state(source, keys)
    return {k.removeprefix(strip): v for k, v in sd.items()} if strip else sd
