"""Pretraining on catalog volumes: Triad, BrainSegFounder or PRISM, one process or DDP via torchrun.

``train_volumes(cfg, rows, run_dir)`` is the whole stage as a plain function; ``python -m
tasks.pretraining.volumes RUN_DIR/job.json`` is the same under ``torchrun``. The loop is the
shared engine's (tasks/pretraining/engine.py), as for the slice trainer: the same distributed
set-up, epoch sampler, bf16 autocast on CUDA, non-finite-loss guard, resumable
``train_state.pt`` and ``metrics.jsonl``. A run directory holds, besides those:

- ``checkpoints/encoder_<it>.pth`` — ``{"state_dict": <encoder in the method's published
  layout>, "method", "encoder", "in_channels", "roi", "iteration", "body_parts"}``, at each
  epoch end and at the end; loadable with ``models.zoo.load(<method>, path)``.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mrifoundry.models.ssl.schedules import cosine_schedule
from mrifoundry.tasks.data.samplers import EpochSampler
from mrifoundry.tasks.data.volumes import VolumeDataset, body_part_classes, select_pairs
from mrifoundry.tasks.pretraining.engine import (LoopSpec, TrainResult, atomic_save, finish_job, load_train_state,
                                                 run_loop, seeded_loader, setup_distributed, unwrap)
from mrifoundry.tasks.pretraining.recipes import VolumeRun

__all__ = ["build_method", "effective_batch_size", "train_volumes"]


def build_method(cfg: VolumeRun, n_body_parts: int = 1) -> nn.Module:
    """The method's pretrainer module (models/ssl3d) for ``cfg``."""
    if cfg.method == "triad":
        from mrifoundry.models.ssl3d.triad import TriadPretrainer
        return TriadPretrainer(encoder=cfg.encoder, roi=cfg.roi, mask_ratio=cfg.mask_ratio, mask_patch=cfg.mask_patch,
                               text_weight=cfg.text_weight, ssl_hidden=cfg.ssl_hidden)
    if cfg.method == "brainsegfounder":
        from mrifoundry.models.ssl3d.brainsegfounder import BrainSegFounderPretrainer
        return BrainSegFounderPretrainer(encoder=cfg.encoder, in_channels=cfg.in_channels, roi=cfg.roi,
                                         contrastive_dim=cfg.contrastive_dim, temperature=cfg.temperature)
    if cfg.method == "prism":
        from mrifoundry.models.ssl3d.prism import PrismPretrainer
        return PrismPretrainer(encoder=cfg.encoder, in_channels=cfg.in_channels, roi=cfg.roi,
                               n_body_parts=max(n_body_parts, 1), mask_ratio=cfg.mask_ratio,
                               mask_patch=cfg.mask_patch, sequence_dim=cfg.sequence_dim,
                               temperature=cfg.temperature)
    raise ValueError(f"unknown volume method {cfg.method!r} (triad | brainsegfounder | prism)")


def effective_batch_size(n: int, batch_size: int, world_size: int) -> int:
    """The smallest batch size ≥ ``batch_size`` whose epoch has no rank batch of 1 item: the
    batch-norm of Triad's head and every contrastive loss need two samples."""
    if n < 2 * world_size:
        raise ValueError(f"{n} training volumes for {world_size} process(es): need at least {2 * world_size}")
    bs = max(batch_size, 2)
    while bs < n and n // (math.ceil(n / (bs * world_size)) * world_size) < 2:
        bs += 1
    return bs


def _param_groups(model: nn.Module) -> list[dict]:
    """No weight decay on biases, norms, tokens and 1-D parameters."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") or "token" in name else decay).append(p)
    return [{"params": decay, "wd_mult": 1.0}, {"params": no_decay, "wd_mult": 0.0}]


def save_encoder_checkpoint(run_dir: Path, iteration: int, model: nn.Module, cfg: VolumeRun,
                            body_parts: list[str]) -> Path:
    path = run_dir / "checkpoints" / f"encoder_{iteration}.pth"
    atomic_save({"state_dict": unwrap(model).encoder_state_dict(), "method": cfg.method, "encoder": cfg.encoder,
                  "in_channels": cfg.in_channels, "roi": cfg.roi, "iteration": iteration,
                  "body_parts": body_parts}, path)
    return path


def train_volumes(cfg: VolumeRun, rows: list[dict], run_dir: Path, *, texts: np.ndarray | None = None,
                  init_state: Path | None = None, resume: bool = True, cache_dir: Path | None = None,
                  on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Pretrain ``cfg.method`` on the volumes of ``rows`` (``query_volumes`` rows) into ``run_dir``.

    ``texts``: [N, D] description embeddings (Triad); ``init_state``: a finished run's
    ``train_state.pt`` whose model weights start this run (BrainSegFounder's stage 2);
    ``cache_dir``: where decoded volumes are kept when ``cfg.cache_volumes`` (default
    ``run_dir/volume_cache``; the runner shares ``OUT/research/cache/volumes`` between runs).

    Raises:
        ValueError: too few volumes, a Triad run without ``texts``, PRISM rows without a
            second series in their exam, or a resumed run whose data or world size differ.
    """
    d = setup_distributed()
    torch.manual_seed(cfg.seed + d.rank)
    run_dir = Path(run_dir)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    pairs = body_parts = None
    if cfg.method == "prism":
        pairs = select_pairs(rows)
        keep = [i for i, p in enumerate(pairs) if p]
        if len(keep) < len(rows):
            raise ValueError(f"PRISM pairs two series of one exam: {len(rows) - len(keep)} of {len(rows)} rows have "
                             "none (select exams with ≥ 2 series, e.g. with tasks.data.volumes.PAIRED_QUERY)")
        body_parts = body_part_classes(rows)
    if cfg.method == "triad" and cfg.text_weight and texts is None:
        raise ValueError("Triad's text loss needs description embeddings (texts=…; tasks/data/text_embed.py)")
    n = len(rows)
    bs = effective_batch_size(n, cfg.batch_size, d.world_size)
    cache = str(cache_dir or Path(run_dir) / "volume_cache") if cfg.cache_volumes else None
    dataset = VolumeDataset(rows, cfg.roi, seed=cfg.seed, flip_prob=cfg.flip_prob,
                            texts=texts if cfg.method == "triad" else None, pairs=pairs, body_parts=body_parts,
                            cache_dir=cache)
    sampler = EpochSampler(n, bs, rank=d.rank, world_size=d.world_size, seed=cfg.seed)
    steps_per_epoch = len(sampler)
    total = cfg.epochs * steps_per_epoch
    warmup = min(int(round(cfg.warmup_epochs * steps_per_epoch)), total)
    lrs = cosine_schedule(cfg.lr, cfg.min_lr, total, warmup_iters=warmup)

    model = build_method(cfg, len(body_parts or []))
    if init_state is not None:
        model.load_state_dict(torch.load(init_state, map_location="cpu", weights_only=False)["model"])
    model = model.to(d.device)
    opt = torch.optim.AdamW(_param_groups(model), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    st = load_train_state(run_dir / "train_state.pt", d, n, "volumes") if resume else None
    if st is not None:
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
    start_it = int(st["iteration"]) if st is not None else 0

    def schedule(it: int) -> dict:
        lr = float(lrs[min(it, total - 1)])
        for g in opt.param_groups:
            g["lr"] = lr
            g["weight_decay"] = cfg.weight_decay * g["wd_mult"]
        return {"lr": lr}

    def forward(net, batch, it: int, s: dict):
        batch = {k: v.to(d.device, non_blocking=True) for k, v in batch.items()}
        return net(batch), batch["image"].shape[0]

    spec = LoopSpec(model=model, optimizer=opt, clip_grad=cfg.clip_grad, schedule=schedule, forward=forward,
                    loader=lambda: seeded_loader(dataset, sampler, num_workers=cfg.num_workers, seed=cfg.seed,
                                                 device=d.device),
                    epoch_start=dataset.set_epoch,
                    state=lambda: {"model": model.state_dict(), "optimizer": opt.state_dict(), "n_volumes": n,
                                   "body_parts": body_parts, "config": cfg.to_dict()},
                    checkpoint=lambda it: save_encoder_checkpoint(run_dir, it, model, cfg, body_parts or []))
    return run_loop(spec, d, sampler, run_dir, start_it=start_it, total=total,
                    stop_at=min(total, cfg.max_iterations) if cfg.max_iterations else total, bf16=cfg.bf16,
                    log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, on_log=on_log)


def main(argv: list[str] | None = None) -> int:
    """``python -m mrifoundry.tasks.pretraining.volumes JOB.json`` (under torchrun): JOB = {config, rows_file,
    texts_file, run_dir, init_state, resume, cache_dir}; rank 0 writes ``result.json`` beside it."""
    argv = sys.argv[1:] if argv is None else argv
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    cfg = VolumeRun.from_dict(job["config"])
    rows = json.loads(Path(job["rows_file"]).read_text())
    texts = np.load(job["texts_file"]) if job.get("texts_file") else None
    res = train_volumes(cfg, rows, Path(job["run_dir"]), texts=texts,
                        init_state=Path(job["init_state"]) if job.get("init_state") else None,
                        resume=job.get("resume", True),
                        cache_dir=Path(job["cache_dir"]) if job.get("cache_dir") else None,
                        on_log=lambda r: print(json.dumps(r), flush=True))
    return finish_job(res, job_path)


if __name__ == "__main__":
    raise SystemExit(main())
