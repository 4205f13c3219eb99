"""Pretraining on catalog slices: DINOv2 (MRI-CORE) or MAE, one process or DDP via torchrun.

``train(cfg, paths, run_dir)`` is the whole stage as a plain function; ``python -m
tasks.pretraining.slices RUN_DIR/job.json`` is the same under ``torchrun`` (the flow starts it for
``nproc > 1``). A run directory holds:

- ``train_state.pt`` — everything needed to resume (student, teacher, optimizer, loss
  centres, iteration); written atomically every ``checkpoint_every`` steps and at the end;
- ``eval/training_<it>/teacher_checkpoint.pth`` — the teacher in MRI-CORE's layout
  (``{"teacher": {"backbone.*", "dino_head.*"}}``), at each epoch end and at the end;
  loadable with ``models.zoo.load("mri-core", path)``;
- ``metrics.jsonl`` — one line per logged step (losses, schedules, throughput).
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from models.heads import DINOHead
from models.recipes import PretrainConfig
from models.ssl.ema import update_teacher
from models.ssl.losses import DINOLoss, KoLeoLoss, iBOTPatchLoss
from models.ssl.mae import MAE
from models.ssl.masking import MaskingGenerator, mask_weights, sample_masks
from models.ssl.multicrop import MultiCrop, MultiCropConfig, collate_multicrop
from models.ssl.schedules import build_schedules
from models.vit import VIT_CONFIGS, DinoVisionTransformer
from tasks.data.slices import SliceDataset
from tasks.data.samplers import EpochSampler

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------- distributed set-up
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


# ---------------------------------------------------------------- networks
class DinoNet(nn.Module):
    """Backbone + shared DINO/iBOT head. One forward so DDP sees every parameter used."""

    def __init__(self, backbone: DinoVisionTransformer, head: DINOHead):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, globals_: torch.Tensor, masks: torch.Tensor | None = None,
                locals_: torch.Tensor | None = None):
        g = self.backbone.forward_features(globals_, masks=masks)
        cls_g = g["x_norm_clstoken"]
        patches = g["x_norm_patchtokens"][masks] if masks is not None else cls_g[:0]
        tokens = [cls_g, patches]
        cls_l = None
        if locals_ is not None:
            cls_l = self.backbone.forward_features(locals_)["x_norm_clstoken"]
            tokens.append(cls_l)
        logits = self.head(torch.cat(tokens))  # one head call: shared DINO/iBOT head
        n_g, n_p = cls_g.shape[0], patches.shape[0]
        return {"cls_global": logits[:n_g], "patch": logits[n_g:n_g + n_p],
                "cls_local": logits[n_g + n_p:] if cls_l is not None else None, "cls_backbone": cls_g}


def build_backbone(cfg: PretrainConfig) -> DinoVisionTransformer:
    vit = VIT_CONFIGS[cfg.arch]
    import dataclasses
    vit = dataclasses.replace(vit, img_size=cfg.global_size, layerscale=None, drop_path_rate=cfg.drop_path_rate)
    return DinoVisionTransformer(vit)


def init_from_sam(backbone: DinoVisionTransformer, sam_weights: Path) -> None:
    """Student ← SAM image encoder (lin→fc, pos_embed resized to the crop grid, cls slot)."""
    from models.convert import sam_to_dinov2
    sd = torch.load(sam_weights, map_location="cpu", weights_only=True)
    sd = sd.get("model", sd) if isinstance(sd, dict) else sd
    grid = backbone.cfg.img_size // backbone.cfg.patch_size
    converted = sam_to_dinov2(sd, grid=grid, keep_neck=False)
    backbone.load_state_dict(converted, strict=True)


def init_from_dinov2(backbone: DinoVisionTransformer, weights: Path) -> None:
    """Student ← a DINOv2 backbone checkpoint (hub ``dinov2_vit*_pretrain.pth`` or a trainer
    teacher): layerscale folded away, pos_embed resized to the crop grid (BrainFound's start)."""
    from models.convert import dinov2_without_layerscale
    sd = torch.load(weights, map_location="cpu", weights_only=True)
    for key in ("model", "teacher", "student"):
        sd = sd[key] if isinstance(sd.get(key), dict) else sd
    grid = backbone.cfg.img_size // backbone.cfg.patch_size
    backbone.load_state_dict(dinov2_without_layerscale(sd, grid=grid), strict=True)


def param_groups(net: DinoNet | nn.Module, cfg: PretrainConfig, depth: int) -> list[dict]:
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


# ---------------------------------------------------------------- data
class MAETransform:
    """One random-resized crop + flip, ImageNet normalisation (MAE's recipe, no colour changes).

    Input ``[1, H, W]`` (grey, replicated to 3 channels) or ``[3, H, W]`` (a T1/T2/FLAIR stack,
    tasks/data/contrast_stacks.py, used as is); float in [0, 1]. Output ``[3, size, size]``.
    """

    def __init__(self, size: int):
        from torchvision.transforms import v2
        self.t = v2.Compose([v2.RandomResizedCrop(size, scale=(0.2, 1.0), antialias=True),
                             v2.RandomHorizontalFlip(), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)])

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 3 or img.shape[0] not in (1, 3):
            raise ValueError(f"expected a [1|3, H, W] image, got shape {tuple(img.shape)}")
        return self.t(img.expand(3, -1, -1) if img.shape[0] == 1 else img)


def _loader(dataset, sampler, cfg: PretrainConfig, collate, device) -> torch.utils.data.DataLoader:
    # its own generator: creating a loader draws a base seed, and from the global RNG that
    # draw would shift the augmentations of a resumed run against an uninterrupted one
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                       num_workers=cfg.num_workers, pin_memory=device.type == "cuda",
                                       persistent_workers=cfg.num_workers > 0,
                                       generator=torch.Generator().manual_seed(cfg.seed))


# ---------------------------------------------------------------- checkpoints
def _atomic_save(obj, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _unwrap(m: nn.Module) -> nn.Module:
    return m.module if isinstance(m, nn.parallel.DistributedDataParallel) else m


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


def wrap_ddp(model: nn.Module, d: Dist) -> nn.Module:
    if d.world_size == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)


def autocast(bf16: bool, d: Dist):
    """bf16 autocast on CUDA; nothing on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if (bf16 and d.device.type == "cuda") \
        else contextlib.nullcontext()


def emit(rec: dict, metrics, on_log: Callable[[dict], None] | None, d: Dist) -> None:
    """One logged step: a line of metrics.jsonl (rank 0) and the caller's callback."""
    if metrics:
        metrics.write(json.dumps(rec) + "\n")
        metrics.flush()
    if on_log and d.main:
        on_log(rec)


def final_result(run_dir: Path, window: list[float], rate: float, it: int, steps_per_epoch: int, total: int,
                 checkpoint: Path | None) -> "TrainResult":
    """The run's result; a re-run of a finished run (nothing left to train) reports what it logged."""
    if not window and (run_dir / "metrics.jsonl").exists():
        logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
        window = [r["loss"] for r in logged[-10:]]
        rate = logged[-1].get("images_per_s", 0.0) if logged else 0.0
    tail = window[-max(1, min(len(window), 10)):] if window else [float("nan")]
    return TrainResult(iterations=it, epochs_done=it // steps_per_epoch, total_iterations=total,
                       final_loss=float(np.mean(tail)), images_per_s=rate, checkpoint=checkpoint,
                       stopped_early=it < total)


def save_teacher_checkpoint(run_dir: Path, iteration: int, backbone: nn.Module, head: nn.Module | None) -> Path:
    """MRI-CORE layout at ``eval/training_<it>/teacher_checkpoint.pth`` (the dinov2 trainer's path)."""
    from models.zoo import save_mri_core_checkpoint
    path = run_dir / "eval" / f"training_{iteration}" / "teacher_checkpoint.pth"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    save_mri_core_checkpoint(backbone.state_dict(), head.state_dict() if head is not None else {}, tmp)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------- training
@dataclass
class TrainResult:
    iterations: int
    epochs_done: int
    total_iterations: int
    final_loss: float
    images_per_s: float
    checkpoint: Path | None
    stopped_early: bool


def train(cfg: PretrainConfig, paths: list[str], run_dir: Path, *, init_weights: Path | None = None,
          resume: bool = True, on_log: Callable[[dict], None] | None = None) -> TrainResult:
    """Pretrain on ``paths`` (PNG slices) into ``run_dir``; resume from its train state.

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
    sampler = EpochSampler(n, cfg.batch_size, rank=d.rank, world_size=d.world_size, seed=cfg.seed)
    steps_per_epoch = len(sampler)
    total = cfg.epochs * steps_per_epoch
    sched = build_schedules(total_iters=total, iters_per_epoch=steps_per_epoch,
                            base_lr=cfg.base_lr * math.sqrt(cfg.batch_size * d.world_size / 1024.0),
                            min_lr=cfg.min_lr, warmup_epochs=cfg.warmup_epochs, wd=cfg.weight_decay,
                            momentum=cfg.momentum, teacher_temp=cfg.teacher_temp,
                            teacher_temp_warmup_epochs=cfg.teacher_temp_warmup_epochs,
                            freeze_last_layer_epochs=cfg.freeze_last_layer_epochs)

    backbone = build_backbone(cfg)
    if cfg.init in ("sam", "dinov2"):
        if init_weights is None or not Path(init_weights).exists():
            raise FileNotFoundError(
                f"init={cfg.init} needs a local " + ("SAM image-encoder checkpoint" if cfg.init == "sam" else
                                                     "DINOv2 backbone checkpoint") + f" (got {init_weights}); e.g. "
                + ("sam_vit_b_01ec64.pth from segment-anything's release" if cfg.init == "sam"
                   else "dinov2_vitb14_pretrain.pth from facebookresearch/dinov2"))
        (init_from_sam if cfg.init == "sam" else init_from_dinov2)(backbone, Path(init_weights))
    depth = backbone.cfg.depth
    grid = cfg.global_size // backbone.cfg.patch_size

    if cfg.objective == "dinov2":
        head = DINOHead(backbone.cfg.embed_dim, cfg.head_out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim)
        student = DinoNet(backbone, head).to(d.device)
        teacher = copy.deepcopy(student)  # MRI-CORE: both start from SAM
        for p in teacher.parameters():
            p.requires_grad_(False)
        dino_loss = DINOLoss(cfg.head_out_dim).to(d.device)
        ibot_loss = iBOTPatchLoss(cfg.head_out_dim).to(d.device)
        koleo = KoLeoLoss()
        crop = MultiCrop(MultiCropConfig(global_size=cfg.global_size, local_size=cfg.local_size, n_local=cfg.n_local))
        dataset, collate = SliceDataset(paths, crop), collate_multicrop
        masker = MaskingGenerator((grid, grid), max_num_patches=int(0.5 * grid * grid))
    elif cfg.objective == "mae":
        student = MAE(backbone, decoder_dim=cfg.mae_decoder_dim, decoder_depth=cfg.mae_decoder_depth,
                      mask_ratio=cfg.mae_mask_ratio).to(d.device)
        teacher = None
        dataset, collate = SliceDataset(paths, MAETransform(cfg.global_size)), torch.stack
    else:
        raise ValueError(f"unknown objective {cfg.objective!r} (dinov2 | mae)")

    opt = torch.optim.AdamW(param_groups(student, cfg, depth), betas=(0.9, 0.999))
    start_it = 0
    state_path = run_dir / "train_state.pt"
    st = load_train_state(state_path, d, n, "slices") if resume else None
    if st is not None:
        student.load_state_dict(st["student"])
        opt.load_state_dict(st["optimizer"])
        if teacher is not None:
            teacher.load_state_dict(st["teacher"])
            dino_loss.load_state_dict(st["dino_loss"])
            ibot_loss.load_state_dict(st["ibot_loss"])
        start_it = int(st["iteration"])
    model = wrap_ddp(student, d)
    stop_at = min(total, cfg.max_iterations) if cfg.max_iterations else total
    amp = autocast(cfg.bf16, d)

    metrics = (run_dir / "metrics.jsonl").open("a") if d.main else None
    it, window, last_ckpt = start_it, [], None
    t_log, n_log = time.perf_counter(), 0
    ips = 0.0
    seen: list[list[int]] = []
    try:
        while it < stop_at:
            epoch, step = divmod(it, steps_per_epoch)
            sampler.set_epoch(epoch)
            sampler.load_state_dict({"epoch": epoch, "step": step})
            planned = sampler.epoch_batches(epoch) if cfg.record_indices else []
            for batch in _loader(dataset, sampler, cfg, collate, d.device):
                if cfg.record_indices:
                    seen.append(planned[it % steps_per_epoch])
                s = sched.at(it)
                for g in opt.param_groups:
                    g["lr"] = (s["last_layer_lr"] if g["is_last_layer"] else s["lr"]) * g["lr_mult"]
                    g["weight_decay"] = s["wd"] * g["wd_mult"]
                with amp:
                    if teacher is not None:
                        parts, bsz = _dino_step(batch, model, teacher, dino_loss, ibot_loss, koleo, masker, cfg, s,
                                                d, it)
                    else:
                        images = batch.to(d.device, non_blocking=True)
                        loss, _, _ = model(images)
                        parts, bsz = {"loss": loss}, images.shape[0]
                loss = parts["loss"]
                optimizer_step(loss, opt, student.parameters(), cfg.clip_grad, it)
                if teacher is not None:
                    update_teacher(teacher, student, s["momentum"])
                it += 1
                n_log += bsz * d.world_size
                window.append(float(loss.detach()))
                if it % cfg.log_every == 0 or it == stop_at:
                    if d.device.type == "cuda":
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - t_log
                    ips = n_log / max(dt, 1e-9)
                    rec = {"iteration": it, "total": total, "epoch": it / steps_per_epoch,
                           **{k: float(v.detach()) for k, v in parts.items()},
                           "lr": s["lr"], "wd": s["wd"], "momentum": s.get("momentum"),
                           "teacher_temp": s.get("teacher_temp"), "images_per_s": ips}
                    emit(rec, metrics, on_log, d)
                    t_log, n_log = time.perf_counter(), 0
                epoch_end = it % steps_per_epoch == 0
                if d.main and (it % cfg.checkpoint_every == 0 or epoch_end or it == stop_at):
                    _atomic_save({"student": student.state_dict(), "optimizer": opt.state_dict(),
                                  "teacher": teacher.state_dict() if teacher is not None else None,
                                  "dino_loss": dino_loss.state_dict() if teacher is not None else None,
                                  "ibot_loss": ibot_loss.state_dict() if teacher is not None else None,
                                  "iteration": it, "n_slices": n, "world_size": d.world_size,
                                  "rng": rng_state(), "config": cfg.to_dict()}, state_path)
                if d.main and (epoch_end or it == stop_at):
                    net = teacher if teacher is not None else student
                    last_ckpt = save_teacher_checkpoint(run_dir, it, _unwrap(net).backbone if teacher is not None
                                                        else student.encoder,
                                                        teacher.head if teacher is not None else None)
                if it >= stop_at:
                    break
    finally:
        if metrics:
            metrics.close()
        if cfg.record_indices:
            (run_dir / f"indices.rank{d.rank}.json").write_text(json.dumps(seen))
        if d.world_size > 1 and dist.is_initialized():
            dist.barrier()
    return final_result(run_dir, window, ips, it, steps_per_epoch, total, last_ckpt)


def _dino_step(batch: dict, model, teacher: DinoNet, dino_loss: DINOLoss, ibot_loss: iBOTPatchLoss,
               koleo: KoLeoLoss, masker: MaskingGenerator, cfg: PretrainConfig, s: dict, d: Dist, it: int):
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
    """``python -m tasks.pretraining.slices JOB.json`` (under torchrun): JOB = {config, paths_file, run_dir,
    init_weights, resume}; rank 0 writes ``result.json`` beside it."""
    argv = sys.argv[1:] if argv is None else argv
    job_path = Path(argv[0])
    job = json.loads(job_path.read_text())
    cfg = PretrainConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in job["config"].items()})
    paths = Path(job["paths_file"]).read_text().splitlines()
    res = train(cfg, paths, Path(job["run_dir"]), init_weights=Path(job["init_weights"]) if job.get("init_weights")
                else None, resume=job.get("resume", True),
                on_log=lambda r: print(json.dumps(r), flush=True))
    return finish_job(res, job_path)


def finish_job(res: TrainResult, job_path: Path) -> int:
    """End of a torchrun job: rank 0 writes ``result.json`` beside the job file."""
    if int(os.environ.get("RANK", "0")) == 0:
        out = {k: (str(v) if isinstance(v, Path) else v) for k, v in res.__dict__.items()}
        (job_path.parent / "result.json").write_text(json.dumps(out))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
