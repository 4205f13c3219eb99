"""Epoch batch sampler for DDP pretraining: every item exactly once per epoch, equal steps per rank.

Each epoch is one permutation of ``range(n_items)`` drawn from ``(seed, epoch)`` alone, so
every rank computes the same one without communicating. It is cut into
``S = ceil(n / (batch_size · world_size))`` near-equal global batches, and each global batch
into ``world_size`` near-equal rank batches. Hence:

- the ranks' batches of an epoch partition ``range(n)`` (nothing repeated, padded or dropped);
- every rank takes S steps (DDP hangs when one rank runs out early);
- rank batch sizes differ by at most 1 and are at most ``batch_size`` — except with
  ``batch_size=1``, where S is capped at ``n // world_size`` so no rank batch is empty, and
  some rank batches then hold 2 items.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[list[int]]):
    """Batch sampler (yields lists of indices) for one rank.

    Args:
        n_items: dataset size n.
        batch_size: per-rank batch size.
        rank: this process's rank.
        world_size: number of processes.
        seed: permutation seed, shared by all ranks.
        shuffle: permute each epoch (otherwise ``range(n)`` in order).
        replacement: draw each epoch's ``n`` items with replacement (DINOv2's default; some items
            are then never seen in a short run), seeded like the permutation.

    Raises:
        ValueError: when ``n_items < world_size`` (some rank would get no item) or on
            invalid sizes / rank.

    Resuming: ``state_dict(consumed_steps)`` records ``(epoch, step)``; after
    ``load_state_dict`` the next iteration over that epoch starts at ``step`` of the same
    permutation, so the run neither repeats nor skips items. ``set_epoch`` with another epoch
    starts that epoch from its first step.
    """

    def __init__(self, n_items: int, batch_size: int, *, rank: int = 0, world_size: int = 1, seed: int = 0,
                 shuffle: bool = True, replacement: bool = False) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"invalid rank {rank} for world_size {world_size}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if n_items < world_size:
            raise ValueError(f"{n_items} items cannot give each of {world_size} ranks a non-empty batch; "
                             "use fewer processes or more data")
        self.n_items = n_items
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.seed = seed
        self.shuffle = shuffle
        self.replacement = replacement
        self.steps_per_epoch = min(math.ceil(n_items / (batch_size * world_size)), n_items // world_size)
        self.epoch = 0
        self._start_step = 0   # where the next iteration starts (non-zero only after a resume)
        self._yielded = 0      # steps handed out in the current epoch

    def __len__(self) -> int:
        """Steps per (full) epoch, the same on every rank."""
        return self.steps_per_epoch

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch (its permutation); a different epoch than the current one starts at step 0."""
        if epoch != self.epoch:
            self.epoch = epoch
            self._start_step = 0
            self._yielded = 0

    def permutation(self, epoch: int) -> np.ndarray:
        """The global order of items in ``epoch`` (identical on all ranks)."""
        if not self.shuffle:
            return np.arange(self.n_items)
        rng = np.random.default_rng([self.seed, epoch])
        return rng.integers(0, self.n_items, self.n_items) if self.replacement else rng.permutation(self.n_items)

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``, all ``steps_per_epoch`` of them."""
        global_batches = np.array_split(self.permutation(epoch), self.steps_per_epoch)
        return [np.array_split(g, self.world_size)[self.rank].tolist() for g in global_batches]

    def __iter__(self) -> Iterator[list[int]]:
        start, self._start_step = self._start_step, 0
        batches = self.epoch_batches(self.epoch)
        self._yielded = start
        for batch in batches[start:]:
            self._yielded += 1
            yield batch

    def state_dict(self, consumed_steps: int | None = None) -> dict:
        """Resumable state ``{"epoch", "step", ...}``.

        Args:
            consumed_steps: steps of the current epoch the trainer has actually finished.
                Pass it when iterating through a DataLoader: the loader prefetches, so the
                sampler's own count (the default) runs ahead of training.
        """
        step = self._yielded if consumed_steps is None else consumed_steps
        return {"epoch": self.epoch, "step": int(step), "n_items": self.n_items, "batch_size": self.batch_size,
                "world_size": self.world_size, "seed": self.seed, "shuffle": self.shuffle}

    def load_state_dict(self, state: dict) -> None:
        """Continue at ``(state["epoch"], state["step"])``.

        Raises:
            ValueError: when the state came from a sampler with another dataset size, batch
                size, world size, seed or shuffle setting (the permutation or the batch
                boundaries would differ, so items would be repeated or skipped).
        """
        for key in ("n_items", "batch_size", "world_size", "seed", "shuffle"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(f"sampler state has {key}={state[key]!r}, this sampler {getattr(self, key)!r}")
        step = int(state["step"])
        if not 0 <= step <= self.steps_per_epoch:
            raise ValueError(f"step {step} outside 0..{self.steps_per_epoch}")
        self.epoch = int(state["epoch"])
        self._start_step = step
        self._yielded = step
