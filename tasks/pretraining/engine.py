"""The training loop both trainers share: distributed set-up, bf16 autocast, resumable train
state with its RNG, the non-finite-loss guard, metrics logging, checkpoints and the torchrun
job's end.

A trainer (tasks/pretraining/slices.py, volumes.py) builds its model, data and optimizer,
then hands the engine a :class:`LoopSpec` of what differs: how one batch becomes losses, the
schedule of one iteration, what the train state and the loadable checkpoint hold.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from mrifoundry.atomic import atomic_path
from mrifoundry.models.ssl.ema import unwrap

__all__ = ["Dist", "LoopSpec", "TrainResult", "atomic_save", "autocast", "finish_job", "load_train_state",
           "run_loop", "seeded_loader", "setup_distributed", "unwrap", "wrap_ddp"]


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """From torchrun's environment: NCCL on GPUs, gloo on CPU; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local}") if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    return Dist(rank, world, local, device)


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    if d.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def autocast(bf16: bool, d: Dist):
    """bf16 autocast on CUDA; nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if (bf16 and d.device.type == "cuda") \
        else contextlib.nullcontext()


def atomic_save(obj, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(state: dict) -> None:
    """The augmentation draws continue where they stopped: resumed == uninterrupted (CPU, 0 workers)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_train_state(path: Path, d: Dist, n: int, unit: str) -> dict | None:
    """A run's ``train_state.pt`` (None when there is none) with the RNG restored from it.

    Raises:
        ValueError: the run had another number of ``unit`` (slices, volumes) or processes.
    """
    if not path.exists():
        return None
    st = torch.load(path, map_location=d.device, weights_only=False)
    if st[f"n_{unit}"] != n or st["world_size"] != d.world_size:
        raise ValueError(f"cannot resume: the run had {st[f'n_{unit}']} {unit} on {st['world_size']} process(es), "
                         f"now {n} on {d.world_size}; start a new run name")
    restore_rng(st["rng"])
    return st


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, params, clip_grad: float, it: int) -> None:
    """Backward, clip, step — after refusing a non-finite loss (a diverged run stops loudly)."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss at iteration {it}: {float(loss)}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if clip_grad:
        nn.utils.clip_grad_norm_(params, clip_grad)
    opt.step()


@dataclass
class TrainResult:
    iterations: int
    epochs_done: int
    total_iterations: int
    final_loss: float
    images_per_s: float
    checkpoint: Path | None
    stopped_early: bool

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items()}


@dataclass
class LoopSpec:
    """What one trainer does differently.

    ``schedule(it)`` sets the optimizer's groups for iteration ``it`` and returns the values
    to log; ``forward(net, batch, it, sched)`` (``net``: the model, DDP-wrapped when
    distributed) returns (named losses with ``loss``, batch size); ``after_step(sched)`` runs
    after the optimizer (the EMA teacher); ``state()`` is the train state's content (the
    engine adds iteration, RNG and world size);
    ``checkpoint(it)`` writes the loadable checkpoint and returns its path;
    ``epoch_start(epoch)`` runs before an epoch's loader (dataset epochs, recorded indices).
    """
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loader: Callable[[], Iterable]
    schedule: Callable[[int], dict]
    forward: Callable[[nn.Module, object, int, dict], tuple[dict, int]]
    state: Callable[[], dict]
    checkpoint: Callable[[int], Path]
    clip_grad: float = 0.0
    after_step: Callable[[dict], None] | None = None
    epoch_start: Callable[[int], None] = field(default=lambda epoch: None)


def run_loop(r: LoopSpec, d: Dist, sampler, run_dir: Path, *, start_it: int, total: int, stop_at: int, bf16: bool,
             log_every: int, checkpoint_every: int, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Train from ``start_it`` to ``stop_at`` (of ``total``) iterations of ``sampler``'s epochs.

    Rank 0 appends a line per logged step to ``metrics.jsonl``, writes ``train_state.pt``
    every ``checkpoint_every`` steps, at each epoch end and at the end, and the recipe's
    checkpoint at each epoch end and at the end.
    """
    steps_per_epoch = len(sampler)
    net = wrap_ddp(r.model, d)
    amp = autocast(bf16, d)
    state_path = run_dir / "train_state.pt"
    metrics = (run_dir / "metrics.jsonl").open("a") if d.main else None
    it, window, last_ckpt, rate = start_it, [], None, 0.0
    t_log, n_log = time.perf_counter(), 0
    try:
        while it < stop_at:
            epoch, step = divmod(it, steps_per_epoch)
            sampler.set_epoch(epoch)
            sampler.load_state_dict({"epoch": epoch, "step": step})
            r.epoch_start(epoch)
            for batch in r.loader():
                sched = r.schedule(it)
                with amp:
                    parts, bsz = r.forward(net, batch, it, sched)
                loss = parts["loss"]
                optimizer_step(loss, r.optimizer, r.model.parameters(), r.clip_grad, it)
                if r.after_step is not None:
                    r.after_step(sched)
                it += 1
                n_log += bsz * d.world_size
                window.append(float(loss.detach()))
                if it % log_every == 0 or it == stop_at:
                    if d.device.type == "cuda":
                        torch.cuda.synchronize()
                    rate = n_log / max(time.perf_counter() - t_log, 1e-9)
                    rec = {"iteration": it, "total": total, "epoch": it / steps_per_epoch,
                           **{k: float(v.detach()) for k, v in parts.items()}, **sched, "images_per_s": rate}
                    _emit(rec, metrics, on_log, d)
                    t_log, n_log = time.perf_counter(), 0
                epoch_end = it % steps_per_epoch == 0
                if d.main and (it % checkpoint_every == 0 or epoch_end or it == stop_at):
                    atomic_save({**r.state(), "iteration": it, "world_size": d.world_size, "rng": rng_state()},
                                state_path)
                if d.main and (epoch_end or it == stop_at):
                    last_ckpt = r.checkpoint(it)
                if it >= stop_at:
                    break
    finally:
        if metrics:
            metrics.close()
        if d.world_size > 1 and dist.is_initialized():
            dist.barrier()
    return _final_result(run_dir, window, rate, it, steps_per_epoch, total, last_ckpt)


def _emit(rec: dict, metrics, on_log: Callable[[dict], None] | None, d: Dist) -> None:
    if metrics:
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
    if on_log and d.main:
        on_log(rec)


def _final_result(run_dir: Path, window: list[float], rate: float, it: int, steps_per_epoch: int, total: int,
                  checkpoint: Path | None) -> TrainResult:
    """The run's result; a re-run of a finished run (nothing left to train) reports what it logged."""
    if not window and (run_dir / "metrics.jsonl").exists():
        logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        window = [r["loss"] for r in logged[-10:]]
        rate = logged[-1].get("images_per_s", 0.0) if logged else 0.0
    tail = window[-max(1, min(len(window), 10)):] if window else [float("nan")]
    return TrainResult(iterations=it, epochs_done=it // steps_per_epoch, total_iterations=total,
                       final_loss=float(np.mean(tail)), images_per_s=rate, checkpoint=checkpoint,
                       stopped_early=it < total)


def seeded_loader(dataset, sampler, *, num_workers: int, seed: int, device: torch.device, collate=None,
                  persistent: bool = False) -> torch.utils.data.DataLoader:
    # its own generator: creating a loader draws a base seed, and from the global RNG that
    # draw would shift the augmentations of a resumed run against an uninterrupted one
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers,
                                       pin_memory=device.type == "cuda", persistent_workers=persistent and num_workers > 0,
                                       generator=torch.Generator().manual_seed(seed))


def finish_job(res: TrainResult, job_path: Path) -> int:
    """End of a torchrun job: rank 0 writes ``result.json`` beside the job file."""
    if int(os.environ.get("RANK", "0")) == 0:
        (job_path.parent / "result.json").write_text(json.dumps(res.as_dict()))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0
