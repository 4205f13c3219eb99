"""The recipes the ``pretrain`` pipeline runs: a model recipe (models/recipes.py) + run control.

Where the line is drawn: models/recipes.py holds everything that defines what is trained —
architecture, objective, losses, crops and masking, optimiser, the schedules' shapes, epochs
and batch size. :class:`RunControl` here holds what drives a run without changing that:
the seed, data-loader workers, log and checkpoint cadence, an early stop, bf16 autocast, and
(per kind) the decoded-volume cache and the batch-index audit log. A run's configuration
(:class:`SliceRun`, :class:`VolumeRun`) is both, flat: ``recipe(name, epochs=2,
max_iterations=3)`` takes either kind of key, and it is still a ``PretrainConfig`` /
``VolumeConfig`` for the model code.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mrifoundry.errors import NotFound
from mrifoundry.models import recipes as model_recipes
from mrifoundry.models.recipes import PretrainConfig, VolumeConfig

__all__ = ["RECIPES", "RunControl", "SliceRun", "VolumeRun", "recipe"]


@dataclass
class RunControl:
    seed: int = 0
    num_workers: int = 8                       # data-loader processes per training process
    log_every: int = 20                        # iterations between metrics.jsonl lines
    checkpoint_every: int = 1000               # iterations between resumable train-state saves
    max_iterations: int | None = None          # stop early (tests, smoke runs)
    bf16: bool = True                          # autocast on CUDA; ignored on CPU
    extra: dict = field(default_factory=dict)


@dataclass
class SliceRun(RunControl, PretrainConfig):
    """A slice recipe as run (tasks/pretraining/slices.py)."""

    record_indices: bool = False               # write each process's batches (indices.rank<r>.json): audits


@dataclass
class VolumeRun(RunControl, VolumeConfig):
    """A volume recipe as run (tasks/pretraining/volumes.py)."""

    checkpoint_every: int = 500
    cache_volumes: bool = True                 # decoded float16 volumes on disk (tasks/data/volume_cache.py)


#: the tiny recipes log every step and save often (tests, the demo); CPU: no loader workers
_TINY_RUN = dict(num_workers=0, log_every=1, checkpoint_every=5)


def _as_run(name: str, model: PretrainConfig | VolumeConfig) -> SliceRun | VolumeRun:
    cls = SliceRun if model.kind == "slices" else VolumeRun
    return cls(**{f.name: getattr(model, f.name) for f in dataclasses.fields(model)},
               **(_TINY_RUN if name.endswith("-tiny") else {}))


RECIPES: dict[str, SliceRun | VolumeRun] = {n: _as_run(n, m) for n, m in model_recipes.RECIPES.items()}


def recipe(name: str, **overrides) -> SliceRun | VolumeRun:
    """The named recipe with ``overrides`` (model or run-control fields).

    Raises:
        KeyError: unknown recipe; ValueError: an unknown field.
    """
    if name not in RECIPES:
        raise NotFound(f"unknown recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name].replace(**overrides)
