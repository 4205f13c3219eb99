"""The zoo's registry: entries (a card and a builder) by name, and ``load``.

models/zoo.py registers the slice encoders, models/zoo3d.py the volume encoders; both import
this module only, so neither imports the other.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mrifoundry.errors import NotFound, UsageError
from mrifoundry.digest import file_sha256

if TYPE_CHECKING:  # for the annotation only
    from mrifoundry.models.zoo import ZooModel

__all__ = ["ZOO", "ZooEntry", "available", "load", "register"]

log = logging.getLogger("mrifoundry.models.zoo")

#: ``builder(entry, weights, arch, image_size, **options)`` → a zoo model (models/zoo.py, zoo3d.py)
Builder = Callable[..., object]


@dataclass(frozen=True)
class ZooEntry:
    """A zoo entry's card and builder.

    ``builder(entry, weights: Path | None, arch: str | None, image_size: int | None,
    **options) -> ZooModel``; ``weights_file`` is the expected local file (None: the
    entry takes no weights); ``options`` the keyword options its builder accepts;
    ``sha256`` is checked when set (None for now: we hold no reference digests).
    """

    name: str
    family: str
    builder: Builder
    weights_file: str | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str
    licence: str
    description: str
    options: tuple[str, ...] = ()
    sha256: str | None = None


ZOO: dict[str, ZooEntry] = {}


def register(entry: ZooEntry, *, overwrite: bool = False) -> ZooEntry:
    """Add an entry; re-registering a name needs ``overwrite=True``."""
    if entry.name in ZOO and not overwrite:
        raise ValueError(f"zoo entry {entry.name!r} already registered")
    if entry.family not in ("sam", "dinov2", "volume"):
        raise ValueError(f"unknown family {entry.family!r}")
    ZOO[entry.name] = entry
    return entry


def available() -> list[str]:
    return sorted(ZOO)


def load(name: str, weights: str | Path | None = None, *, arch: str | None = None,
         image_size: int | None = None, device: str | torch.device = "cpu",
         **options) -> ZooModel:
    """Build a zoo model from a local weight file.

    Args:
        name: a key of :data:`ZOO` (see :func:`available`).
        weights: local checkpoint in the entry's native layout; None only for ``random``.
        arch: architecture preset (``VIT_CONFIGS`` / ``SAM_CONFIGS`` key); default per entry.
        image_size: input size; default the size the weights were trained at. For SAM it
            also sets the token grid (pos_embed and global rel_pos are resized).
        device: where the encoder goes.
        **options: entry-specific (``mri-core``: ``as_sam``, ``sam_init``; ``random``: ``seed``).

    Raises:
        ValueError: unknown name, weights missing (the message names the expected file),
            weights given to ``random``, checksum mismatch, unknown options.
        FileNotFoundError: ``weights`` does not exist.
    """
    if name not in ZOO:
        raise NotFound(f"unknown zoo model {name!r}; available: {available()}")
    entry = ZOO[name]
    unknown = sorted(set(options) - set(entry.options))
    if unknown:
        raise UsageError(f"{name!r} does not take options {unknown}; it takes {list(entry.options)}")
    path = None
    if entry.weights_file is None:
        if weights is not None:
            raise ValueError(f"{name!r} takes no weights")
    elif weights is None:
        raise UsageError(f"{name!r} needs local weights: pass weights=<path to "
                         f"{entry.weights_file}> (from {entry.source}); nothing is downloaded")
    else:
        path = Path(weights)
        if not path.is_file():
            raise FileNotFoundError(f"{name!r} weights not found: {path} (expected {entry.weights_file})")
        if entry.sha256 and file_sha256(path) != entry.sha256:
            raise ValueError(f"{path} does not match {name!r}'s sha256 {entry.sha256}")
    model = entry.builder(entry, path, arch, image_size, **options)
    model.encoder.to(device).eval()
    if model.missing_keys:
        log.info("%s: %d encoder tensors not in the weights, left at init: %s", name,
                 len(model.missing_keys), ", ".join(model.missing_keys))
    return model
