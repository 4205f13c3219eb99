"""Pretraining on catalog slices: DINOv2 (MRI-CORE) or MAE, one process or DDP via torchrun.

``train(cfg, paths, run_dir)`` is the whole stage as a plain function; ``python -m
tasks.pretraining.slices RUN_DIR/job.json`` is the same under ``torchrun`` (the runner starts
it for ``nproc > 1``). The loop is the shared engine's (tasks/pretraining/engine.py). A run
directory holds:

- ``train_state.pt`` — everything needed to resume (student, teacher, optimizer, loss
  centres, iteration, RNG); written atomically every ``checkpoint_every`` steps and at the end;
- ``eval/training_<it>/teacher_checkpoint.pth`` — the teacher in MRI-CORE's layout
  (``{"teacher": {"backbone.*", "dino_head.*"}}``), at each epoch end and at the end;
  loadable with ``models.zoo.load("mri-core", path)``;
- ``metrics.jsonl`` — one line per logged step (losses, schedules, throughput).
"""
from __future__ import annotations

import copy
import json
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from mrifoundry.models.heads import DINOHead
from mrifoundry.models.ssl.dino import DinoNet, build_backbone, init_from_dinov2, init_from_sam
from mrifoundry.models.ssl.ema import update_teacher
from mrifoundry.models.ssl.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from mrifoundry.models.ssl.mae import MAE, MAETransform
from mrifoundry.models.ssl.masking import MaskingGenerator, mask_weights, sample_masks
from mrifoundry.models.ssl.multicrop import MultiCrop, MultiCropConfig, collate_multicrop
from mrifoundry.models.ssl.schedules import build_schedules
from mrifoundry.models.zoo import save_mri_core_checkpoint
from mrifoundry.tasks.data.samplers import EpochSampler
from mrifoundry.atomic import atomic_path
from mrifoundry.tasks.data.slices import SliceDataset, read_slice_list
from mrifoundry.tasks.pretraining.engine import (Dist, LoopSpec, TrainResult, finish_job, load_train_state, run_loop,
                                                 seeded_loader, setup_distributed, unwrap)
from mrifoundry.tasks.pretraining.recipes import SliceRun

__all__ = ["DinoObjective", "MaeObjective", "TrainResult", "main", "param_groups", "train"]


def param_groups(net: DinoNet | nn.Module, cfg: SliceRun, depth: int) -> list[dict]:
    """AdamW groups: layer-wise lr decay, patch_embed lr ×0.2, no weight decay on biases,
    norms and tokens; the head's last layer flagged (frozen during the first steps)."""
    groups: dict[tuple, dict] = {}
    for name, p in net.named_parameters():
        if not p.requires_grad:
            continue
        wd_mult = 0.0 if (p.ndim == 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name
                          or "weight_g" in name) else 1.0
        lr_mult, last = 1.0, "last_layer" in name
        if name.startswith("backbone.") or name.startswith("encoder."):
            sub = name.split(".", 1)[1]
            if sub.startswith("blocks."):
                layer = int(sub.split(".")[1]) + 1
            elif sub.startswith(("patch_embed", "pos_embed", "cls_token", "mask_token")):
                layer = 0
            else:
                layer = depth + 1
            lr_mult = cfg.layerwise_decay ** (depth + 1 - layer)
            if sub.startswith("patch_embed"):
                lr_mult *= cfg.patch_embed_lr_mult
        key = (round(lr_mult, 8), wd_mult, last)
        groups.setdefault(key, {"params": [], "lr_mult": lr_mult, "wd_mult": wd_mult, "is_last_layer": last})
        groups[key]["params"].append(p)
    return list(groups.values())


def save_teacher_checkpoint(run_dir: Path, iteration: int, backbone: nn.Module, head: nn.Module | None) -> Path:
    """MRI-CORE layout at ``eval/training_<it>/teacher_checkpoint.pth`` (the dinov2 trainer's path)."""
    path = run_dir / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth"
    with atomic_path(path) as tmp:
        save_mri_core_checkpoint(backbone.state_dict(), head.state_dict() if head is not None else {}, tmp)
    return path


def train(cfg: SliceRun, paths: list[str], run_dir: Path, *, init_weights: Path | None = None,
          resume: bool = True, on_log: Callable[[dict], None] | None = None,
          windows: list[tuple[float, float]] | None = None) -> TrainResult:
    """Pretrain on ``paths`` (PNG slices) into ``run_dir``; resume from its train state.
    ``windows``: volume-wise normalisation (``cfg.normalization == "volume"``; RUN/slices.txt).

    Raises:
        ValueError: too few slices for the batch/world size, or a resumed run whose data or
            world size differ.
        FileNotFoundError: ``init="sam"`` without a SAM checkpoint.
    """
    d = setup_distributed()
    torch.manual_seed(cfg.seed + d.rank)
    run_dir = Path(run_dir)
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    n = len(paths)
    if n < 2 * d.world_size:
        raise ValueError(f"{n} training slices for {d.world_size} process(es): need at least {2 * d.world_size}")
    if cfg.sampling not in ("without_replacement", "with_replacement"):
        raise ValueError(f"sampling {cfg.sampling!r}: without_replacement or with_replacement")
    if (cfg.normalization == "volume") != (windows is not None):
        raise ValueError("normalization=volume needs the slices' volume windows (RUN/slices.txt from write_slices)")
    sampler = EpochSampler(n, cfg.batch_size, rank=d.rank, world_size=d.world_size, seed=cfg.seed,
                           replacement=cfg.sampling == "with_replacement")
    steps_per_epoch = len(sampler)
    total = cfg.epochs * steps_per_epoch
    sched = build_schedules(total_iters=total, iters_per_epoch=steps_per_epoch,
                            base_lr=cfg.base_lr * math.sqrt(cfg.batch_size * d.world_size / 1024.0),
                            min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, wd=cfg.weight_decay,
                            momentum=cfg.momentum, teacher_temp=cfg.teacher_temp,
                            teacher_temp_warmup_epochs=cfg.teacher_temp_warmup_epochs,
                            freeze_last_layer_epochs=cfg.freeze_last_layer_epochs)
    backbone = _backbone(cfg, init_weights)
    if cfg.objective == "dinov2":
        net = DinoObjective(cfg, backbone, paths, d, windows)
    elif cfg.objective == "mae":
        if cfg.init == "sam_student":
            raise ValueError("init=sam_student is a DINOv2 ablation (student vs teacher); MAE has one network")
        net = MaeObjective(cfg, backbone, paths, d, windows)
    else:
        raise ValueError(f"unknown objective {cfg.objective!r} (dinov2 | mae)")
    opt = torch.optim.AdamW(param_groups(net.student, cfg, backbone.cfg.depth), betas=(0.9, 0.999))
    st = load_train_state(run_dir / "train_state.pt", d, n, "slices") if resume else None
    if st is not None:
        net.load(st)
        opt.load_state_dict(st["optimizer"])
    start_it = int(st["iteration"]) if st is not None else 0

    def schedule(it: int) -> dict:
        s = sched.at(it)
        for g in opt.param_groups:
            g["lr"] = (s["last_layer_lr"] if g["is_last_layer"] else s["lr"]) * g["lr_mult"]
            g["weight_decay"] = s["wd"] * g["wd_mult"]
        return {"lr": s["lr"], "wd": s["wd"], "momentum": s.get("momentum"), "teacher_temp": s.get("teacher_temp")}

    seen: list[list[int]] = []
    planned: list[list[int]] = []

    def epoch_start(epoch: int) -> None:
        planned[:] = sampler.epoch_batches(epoch) if cfg.record_indices else []

    def forward(model, batch, it: int, s: dict):
        if cfg.record_indices:
            seen.append(planned[it % steps_per_epoch])
        return net.forward(model, batch, it, s)

    spec = LoopSpec(model=net.student, optimizer=opt, clip_grad=cfg.clip_grad,
                    loader=lambda: seeded_loader(net.dataset, sampler, num_workers=cfg.num_workers, seed=cfg.seed,
                                                 device=d.device, collate=net.collate, persistent=True),
                    schedule=schedule, forward=forward, after_step=net.after_step, epoch_start=epoch_start,
                    state=lambda: {**net.state(), "optimizer": opt.state_dict(), "n_slices": n,
                                   "config": cfg.to_dict()},
                    checkpoint=lambda it: save_teacher_checkpoint(run_dir, it, *net.export()))
    try:
        return run_loop(spec, d, sampler, run_dir, start_it=start_it, total=total,
                        stop_at=min(total, cfg.max_iterations) if cfg.max_iterations else total, bf16=cfg.bf16,
                        log_every=cfg.log_every, checkpoint_every=cfg.checkpoint_every, on_log=on_log)
    finally:
        if cfg.record_indices:
            (run_dir / f"indices.rank{d.rank}.json").write_text(json.dumps(seen))


def _backbone(cfg: SliceRun, init_weights: Path | None):
    backbone = build_backbone(cfg)
    sam = cfg.init in ("sam", "sam_student")
    if sam or cfg.init == "dinov2":
        if init_weights is None or not Path(init_weights).exists():
            raise FileNotFoundError(
                f"init={cfg.init} needs a local " + ("SAM image-encoder checkpoint" if sam else
                                                     "DINOv2 backbone checkpoint") + f" (got {init_weights}); e.g. "
                + ("sam_vit_b_01ec64.pth from segment-anything's release" if sam
                   else "dinov2_vitb14_pretrain.pth from facebookresearch/dinov2"))
        (init_from_sam if sam else init_from_dinov2)(backbone, Path(init_weights))
    elif cfg.init != "random":
        raise ValueError(f"init {cfg.init!r}: sam, sam_student, dinov2 or random")
    return backbone


class DinoObjective:
    """DINOv2: student and EMA teacher (both from the same start, as MRI-CORE; with
    ``init=sam_student`` the teacher's backbone starts random instead), multi-crop data."""

    def __init__(self, cfg: SliceRun, backbone, paths: list[str], d: Dist, windows=None):
        self.cfg, self.d = cfg, d
        head = DINOHead(backbone.cfg.embed_dim, cfg.head_out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim)
        self.student = DinoNet(backbone, head).to(d.device)
        self.teacher = copy.deepcopy(self.student)
        if cfg.init == "sam_student":
            self.teacher.backbone.load_state_dict(build_backbone(cfg).state_dict())
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.dino_loss = DINOLoss(cfg.head_out_dim).to(d.device)
        self.ibot_loss = iBOTPatchLoss(cfg.head_out_dim).to(d.device)
        self.koleo = KoLeoLoss()
        crop = MultiCrop(MultiCropConfig(global_size=cfg.global_size, local_size=cfg.local_size, n_local=cfg.n_local))
        self.dataset, self.collate = SliceDataset(paths, crop, windows), collate_multicrop
        grid = cfg.global_size // backbone.cfg.patch_size
        self.masker = MaskingGenerator((grid, grid), max_num_patches=int(0.5 * grid * grid))

    def forward(self, model, batch, it: int, s: dict):
        return _dino_step(batch, model, self.teacher, self.dino_loss, self.ibot_loss, self.koleo, self.masker,
                          self.cfg, s, self.d, it)

    def after_step(self, s: dict) -> None:
        update_teacher(self.teacher, self.student, s["momentum"])

    def state(self) -> dict:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "dino_loss": self.dino_loss.state_dict(), "ibot_loss": self.ibot_loss.state_dict()}

    def load(self, st: dict) -> None:
        self.student.load_state_dict(st["student"])
        self.teacher.load_state_dict(st["teacher"])
        self.dino_loss.load_state_dict(st["dino_loss"])
        self.ibot_loss.load_state_dict(st["ibot_loss"])

    def export(self) -> tuple[nn.Module, nn.Module | None]:
        return unwrap(self.teacher).backbone, self.teacher.head


class MaeObjective:
    """MAE: one network, one random-resized crop per slice."""

    after_step = None

    def __init__(self, cfg: SliceRun, backbone, paths: list[str], d: Dist, windows=None):
        self.d = d
        self.student = MAE(backbone, decoder_dim=cfg.mae_decoder_dim, decoder_depth=cfg.mae_decoder_depth,
                           mask_ratio=cfg.mae_mask_ratio).to(d.device)
        self.dataset, self.collate = SliceDataset(paths, MAETransform(cfg.global_size), windows), torch.stack

    def forward(self, model, batch, it: int, s: dict):
        images = batch.to(self.d.device, non_blocking=True)
        loss, _, _ = model(images)
        return {"loss": loss}, images.shape[0]

    def state(self) -> dict:
        return {"student": self.student.state_dict(), "teacher": None, "dino_loss": None, "ibot_loss": None}

    def load(self, st: dict) -> None:
        self.student.load_state_dict(st["student"])

    def export(self) -> tuple[nn.Module, nn.Module | None]:
        return self.student.encoder, None


def _dino_step(batch: dict, model, teacher: DinoNet, dino_loss: DINOLoss, ibot_loss: iBOTPatchLoss,
               koleo: KoLeoLoss, masker: MaskingGenerator, cfg: SliceRun, s: dict, d: Dist, it: int):
    """One DINOv2 step's losses: DINO (cls, all crops vs teacher globals), iBOT (masked
    patches vs teacher patches), KoLeo (student global cls tokens)."""
    globals_ = batch["global"].to(d.device, non_blocking=True)
    locals_ = batch["local"].to(d.device, non_blocking=True) if cfg.n_local else None
    n_g = 2
    bsz = globals_.shape[0] // n_g
    grid = cfg.global_size // teacher.backbone.cfg.patch_size
    # masks per (seed, iteration, rank): a resumed run draws the same masks
    rng = np.random.default_rng([cfg.seed, it, d.rank])
    masks = sample_masks(globals_.shape[0], (grid, grid), ratio_range=cfg.mask_ratio,
                         mask_probability=cfg.mask_probability, generator=masker, rng=rng).to(d.device)
    with torch.no_grad():
        # the teacher sees the unmasked crops; its patch tokens at the student's masked positions
        tf = teacher.backbone.forward_features(globals_)
        t_cls = tf["x_norm_clstoken"]
        logits = teacher.head(torch.cat([t_cls, tf["x_norm_patchtokens"][masks]]))
        t_cls_logits, t_patch_logits = logits[:t_cls.shape[0]], logits[t_cls.shape[0]:]
        temp = s["teacher_temp"]
        t_dino = dino_loss.softmax_center_teacher(t_cls_logits, temp).chunk(n_g)
        t_ibot = ibot_loss.softmax_center_teacher(t_patch_logits, temp)
        dino_loss.update_center(t_cls_logits)
        ibot_loss.update_center(t_patch_logits)
    out = model(globals_, masks=masks, locals_=locals_)
    student_logits = list(out["cls_global"].chunk(n_g))
    if out["cls_local"] is not None:
        student_logits += list(out["cls_local"].chunk(cfg.n_local))
    l_dino = dino_loss(student_logits, list(t_dino), n_global=n_g)
    weights = mask_weights(masks)
    # DINOv2 divides by every global crop, masked or not (so the iBOT term scales with the mask probability)
    l_ibot = ibot_loss.forward_masked(out["patch"], t_ibot, weights, masks.shape[0])
    l_koleo = sum(koleo(c) for c in out["cls_backbone"].chunk(n_g))
    loss = cfg.dino_weight * l_dino + cfg.ibot_weight * l_ibot + cfg.koleo_weight * l_koleo
    return {"loss": loss, "dino": l_dino, "ibot": l_ibot, "koleo": l_koleo}, bsz


def main(argv: list[str] | None = None) -> int:
    """``python -m mrifoundry.tasks.pretraining.slices JOB.json`` (under torchrun): JOB = {config, paths_file, run_dir,
    init_weights, resume}; rank 0 writes ``result.json`` beside it."""
    argv = sys.argv[1:] if argv is None else argv
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    cfg = SliceRun.from_dict(job["config"])
    paths, windows = read_slice_list(Path(job["paths_file"]))
    res = train(cfg, paths, Path(job["run_dir"]), init_weights=Path(job["init_weights"]) if job.get("init_weights")
                else None, resume=job.get("resume", True),
                on_log=lambda r: print(json.dumps(r), flush=True), windows=windows)
    return finish_job(res, job_path)



if __name__ == "__main__":
    raise SystemExit(main())
