"""Few-shot segmentation as MRI-CORE's ``main.py`` runs it, as plain functions.

Protocol (docs: /work/shared/notes/model-anchors.md §1): per repeat, ``k`` training patients
with one random foreground slice each, ``n_val`` validation patients with
``val_slices_per_patient`` random foreground slices each (default 1: "five slices for
fine-tuning and five slices for fine-tuning-related validation", the paper's §2.2), the
dataset's test split for testing; SAM fine-tuned with adapters (MRI-CORE, the default), LoRA
or in full (``cfg.mode``; ``models.adapters``, ``models.lora``), DiceCE loss,
AdamW with linear warm-up then poly decay, joint random-resized-crop + rotation augmentation,
validation 3D DSC every ``val_every`` epochs with early stopping, best weights kept; then test
2D DSC, 3D DSC and 3D NSD (1 voxel) at ``out_size``.

Inputs are ``tasks.ingest.labelled2d.load_labelled`` rows (``image_file``, ``mask_file``, ``patient_id``,
``split``, ``slice_index``, ``has_foreground``). Masks are binary: any non-zero label is
foreground (MRI-CORE's ``num_cls=1``).

Departures from MRI-CORE, all deliberate:
- everything is seeded (MRI-CORE ignores its ``seed``); repeat ``r`` uses seed ``cfg.seed + r``
  for the slice draw, the model's random init, batch order and augmentation;
- intensity augmentation (RandomEqualize, ColorJitter) is left out; the crop area is drawn in
  ``crop_scale`` = (0.5, 1.0) of the image: torchvision's RandomResizedCrop, given MRI-CORE's
  (0.5, 1.5), cannot take crops larger than the image and falls back to the whole image;
- the model normalises its input (``FewShotSam``: the zoo model's mean/std), so images here
  are [0, 1];
- test metrics are reported on foreground slices only (MRI-CORE's ``delete_empty_masks``:
  ``test_*``) and on all slices of the test patients (``test_all_*``);
- 2D DSC is the mean of per-slice DSCs (``tasks.evaluation.metrics``), MRI-CORE's number at batch 1.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from PIL import Image
from torch import Tensor, nn

from mrifoundry.tasks.evaluation.metrics import dice_2d, dice_3d, nsd_3d
from mrifoundry.tasks.evaluation.repeats import mean_sd

__all__ = ["FewShotConfig", "pick_fewshot", "fewshot_lr", "load_slices", "random_crop_rotate",
           "predict", "train_fewshot", "run_fewshot", "METRICS"]

log = logging.getLogger(__name__)

METRICS = ("test_dsc_2d", "test_dsc_3d", "test_nsd_3d", "test_all_dsc_2d", "test_all_dsc_3d",
           "test_all_nsd_3d", "best_val_dsc_3d")


@dataclass(frozen=True)
class FewShotConfig:
    """MRI-CORE's few-shot settings (defaults as its ``main.py`` and the paper); ``tiny()`` for tests
    and the demo only.

    ``mode``: adapter (MRI-CORE), lora (finetune-SAM, rank ``lora_rank``) or full
    (``models.adapters.build_sam_for_fewshot``). ``val_slices_per_patient``: foreground slices
    drawn per validation patient (None: all of them).

    An epoch is one pass over the ``k`` training slices (``ceil(k / batch_size)`` iterations);
    warm-up and poly decay count iterations. Early stopping: after ``min_epochs`` epochs, stop
    once the best validation 3D DSC is ``patience`` epochs old.
    """

    k_patients: int = 5
    n_val_patients: int = 5
    val_slices_per_patient: int | None = 1
    mode: str = "adapter"
    lora_rank: int = 4
    image_size: int = 1024
    out_size: int = 256
    epochs: int = 3000
    batch_size: int = 2
    lr: float = 1e-4
    weight_decay: float = 0.1
    warmup_iters: int = 200
    poly_power: float = 0.9
    val_every: int = 10
    patience: int = 200
    min_epochs: int = 1000
    repeats: int = 10
    seed: int = 0
    encoder_adapter_depths: tuple[int, ...] = (0, 1, 10, 11)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    rotation_deg: float = 45.0
    nsd_tolerance: float = 1.0
    eval_batch_size: int = 8
    device: str | None = None  # None: cuda when available

    @classmethod
    def tiny(cls, **overrides) -> FewShotConfig:
        """Seconds on a CPU: 64 px in, 16 px out, 3 + 2 patients, 30 epochs, 2 repeats; lr 1e-2
        because 60 iterations at 1e-4 barely move a randomly initialised tiny SAM's adapters."""
        base = cls(k_patients=3, n_val_patients=2, image_size=64, out_size=16, epochs=30, lr=1e-2,
                   weight_decay=0.0, warmup_iters=5, val_every=5, patience=10, min_epochs=0, repeats=2,
                   eval_batch_size=16)
        return replace(base, **overrides)


# ------------------------------------------------------------------ data selection

def _ordered(rows: list[dict]) -> list[dict]:
    # 3D metrics stack a patient's slices in this order: by patient, then slice index
    return sorted(rows, key=lambda r: (str(r["patient_id"]), int(r["slice_index"])))


def _patients(rows: list[dict]) -> list[str]:
    return sorted({str(r["patient_id"]) for r in rows})


def pick_fewshot(rows: list[dict], k: int, n_val: int, seed: int, *, random_patients: bool = False,
                 val_slices: int | None = None) -> dict[str, list[dict]]:
    """Split labelled rows into few-shot train / val / test sets.

    - ``train``: the first ``k`` train-split patients with foreground (sorted ids; MRI-CORE takes
      the first ``fs_num`` of its list) or, with ``random_patients``, ``k`` drawn with ``seed``;
      one foreground slice each, drawn with ``seed``.
    - ``val``: ``n_val`` val-split patients chosen the same way (fewer if the split has fewer),
      ``val_slices`` foreground slices each drawn with ``seed`` after the training draw (all
      when None or when a patient has fewer).
    - ``test``: the test split's foreground slices (MRI-CORE's ``delete_empty_masks``);
      ``test_all``: every test-split slice.

    Lists are ordered by patient, then slice index.

    Raises:
        ValueError: fewer than ``k`` train patients with foreground; a patient in two splits.
    """
    by_split: dict[str, list[dict]] = {"train": [], "val": [], "test": []}
    owner: dict[str, str] = {}
    for r in rows:
        s, pid = r["split"], str(r["patient_id"])
        if s not in by_split:
            continue
        if owner.setdefault(pid, s) != s:
            raise ValueError(f"patient {pid!r} is in splits {owner[pid]!r} and {s!r}")
        by_split[s].append(r)
    rng = np.random.default_rng(seed)

    def choose(cands: list[str], n: int) -> list[str]:
        if not random_patients:
            return cands[:n]
        return sorted(cands[i] for i in rng.choice(len(cands), size=min(n, len(cands)), replace=False))

    fg_train = [r for r in by_split["train"] if r["has_foreground"]]
    cands = _patients(fg_train)
    if len(cands) < k:
        raise ValueError(f"{len(cands)} train patients with foreground, need k={k}")
    train = []
    for pid in choose(cands, k):
        slices = _ordered([r for r in fg_train if str(r["patient_id"]) == pid])
        train.append(slices[int(rng.integers(len(slices)))])
    fg_val = [r for r in by_split["val"] if r["has_foreground"]]
    val_ids = set(choose(_patients(fg_val), n_val))
    if len(val_ids) < n_val:
        log.warning("only %d val patients with foreground (asked %d)", len(val_ids), n_val)
    val = []
    for pid in sorted(val_ids):
        slices = _ordered([r for r in fg_val if str(r["patient_id"]) == pid])
        if val_slices is not None and val_slices < len(slices):
            slices = [slices[i] for i in sorted(rng.choice(len(slices), size=val_slices, replace=False))]
        val += slices
    test_all = _ordered(by_split["test"])
    return {"train": train, "val": val,
            "test": [r for r in test_all if r["has_foreground"]], "test_all": test_all}


# ------------------------------------------------------------------ data loading

def _read(path, size: int, resample) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("L")
        if im.size != (size, size):
            im = im.resize((size, size), resample)
        return np.asarray(im)


def load_slices(rows: Sequence[dict], image_size: int, mask_size: int) -> tuple[Tensor, Tensor]:
    """Images ``uint8 [N,1,S,S]`` (bilinear to ``image_size``) and binary masks ``bool [N,M,M]``
    (nearest to ``mask_size``; any non-zero label is foreground)."""
    imgs = np.stack([_read(r["image_file"], image_size, Image.BILINEAR) for r in rows])
    masks = np.stack([_read(r["mask_file"], mask_size, Image.NEAREST) > 0 for r in rows])
    return torch.from_numpy(imgs)[:, None], torch.from_numpy(masks)


def random_crop_rotate(images: Tensor, masks: Tensor, out_size: int, g: torch.Generator,
                       scale: tuple[float, float] = (0.5, 1.0), degrees: float = 45.0) -> tuple[Tensor, Tensor]:
    """One joint random resized crop + rotation per sample (zero fill outside the image).

    ``images`` float ``[B,C,S,S]``, ``masks`` float ``[B,1,H,W]`` (any resolution); returns the
    image at ``S`` (bilinear) and the mask at ``out_size`` (nearest). The crop covers an area
    fraction drawn from ``scale`` with aspect ratio in [3/4, 4/3], as RandomResizedCrop.
    """
    b = images.shape[0]
    u = torch.rand(b, 5, generator=g)
    area = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    log_r = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * u[:, 1]
    w = torch.sqrt(area * log_r.exp()).clamp(max=1.0)   # half-extent in normalised coords
    h = torch.sqrt(area / log_r.exp()).clamp(max=1.0)
    cx = (2 * u[:, 2] - 1) * (1 - w)
    cy = (2 * u[:, 3] - 1) * (1 - h)
    th = torch.deg2rad((2 * u[:, 4] - 1) * degrees)
    cos, sin = th.cos(), th.sin()
    # sampling grid: input = centre + diag(w, h) · R(th) · output
    theta = torch.stack([torch.stack([w * cos, -w * sin, cx], 1),
                         torch.stack([h * sin, h * cos, cy], 1)], 1).to(images.dtype)
    grid_i = F.affine_grid(theta, list(images.shape), align_corners=False)
    grid_m = F.affine_grid(theta, [b, 1, out_size, out_size], align_corners=False)
    img = F.grid_sample(images, grid_i.to(images.device), mode="bilinear", padding_mode="zeros", align_corners=False)
    msk = F.grid_sample(masks, grid_m.to(masks.device), mode="nearest", padding_mode="zeros", align_corners=False)
    return img, msk


# ------------------------------------------------------------------ schedule, prediction

def fewshot_lr(iteration: int, total_iters: int, lr: float, warmup_iters: int, power: float = 0.9) -> float:
    """Learning rate for 0-based ``iteration`` (finetune-SAM / MRI-CORE's scheme, up to when
    upstream's per-step update takes effect).

    Warm-up: ``lr·(t+1)/W`` for ``t < W``; then poly ``lr·(1 − (t−W)/T)^power`` with ``T`` the
    total iteration count (upstream divides by ``T``, not ``T − W``, so the decay never reaches 0
    within the run); clipped at 0.
    """
    if iteration < warmup_iters:
        return lr * (iteration + 1) / warmup_iters
    frac = 1.0 - (iteration - warmup_iters) / max(total_iters, 1)
    return lr * max(frac, 0.0) ** power


def _logits(model: nn.Module, x: Tensor, out_size: int) -> Tensor:
    y = model(x)
    if y.shape[-1] != out_size or y.shape[-2] != out_size:
        y = F.interpolate(y, size=(out_size, out_size), mode="bilinear", align_corners=False)
    return y


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, out_size: int, batch_size: int = 8) -> Tensor:
    """Binary predictions ``bool [N, out, out]`` (logits > 0) for uint8 images ``[N,1,S,S]``."""
    was_training = model.training
    model.eval()
    dev = next(model.parameters()).device
    out = [(_logits(model, images[i:i + batch_size].to(dev).float() / 255, out_size)[:, 0] > 0).cpu()
           for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, out_size, out_size, dtype=torch.bool)


def _predict_rows(model: nn.Module, rows: list[dict], cfg: FewShotConfig) -> tuple[np.ndarray, np.ndarray]:
    # streamed in chunks: a test split at 1024 px does not fit in memory at once
    preds, targets = [], []
    chunk = max(cfg.eval_batch_size, 1) * 8
    for i in range(0, len(rows), chunk):
        x, m = load_slices(rows[i:i + chunk], cfg.image_size, cfg.out_size)
        preds.append(predict(model, x, cfg.out_size, cfg.eval_batch_size).numpy())
        targets.append(m.numpy())
    return np.concatenate(preds), np.concatenate(targets)


def _seg_metrics(pred: np.ndarray, target: np.ndarray, rows: list[dict], tol: float, prefix: str) -> dict:
    if not len(rows):
        return {f"{prefix}_dsc_2d": float("nan"), f"{prefix}_dsc_3d": float("nan"),
                f"{prefix}_nsd_3d": float("nan")}
    pids = [str(r["patient_id"]) for r in rows]
    d3, n3 = dice_3d(pred, target, pids), nsd_3d(pred, target, pids, tolerance=tol)
    return {f"{prefix}_dsc_2d": dice_2d(pred, target), f"{prefix}_dsc_3d": d3.mean,
            f"{prefix}_nsd_3d": n3.mean, f"{prefix}_dsc_3d_per_patient": dict(d3),
            f"{prefix}_nsd_3d_per_patient": dict(n3)}


def _device(cfg: FewShotConfig) -> torch.device:
    return torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))


# ------------------------------------------------------------------ training

def train_fewshot(model_factory: Callable[[], nn.Module], rows: list[dict], cfg: FewShotConfig,
                  repeat: int = 0) -> dict:
    """Train one few-shot repeat and test it.

    Args:
        model_factory: returns a fresh model mapping ``[B,1,S,S]`` images in [0, 1] to logits
            ``[B,1,h,w]`` (e.g. ``lambda: build_sam_for_fewshot(zoo_model, cfg.image_size)``);
            called under ``torch.manual_seed(seed)``; its trainable parameters are optimised.
        rows: ``load_labelled`` rows of one dataset, all splits.
        cfg: settings; ``epochs=0`` evaluates the untrained model.
        repeat: repeat index; seed = ``cfg.seed + repeat``.

    Returns:
        ``metrics`` (``test_*`` on foreground test slices, ``test_all_*`` on all test slices,
        ``best_val_dsc_3d``; per-patient dicts alongside), ``curves`` (``train_loss`` per
        epoch, ``val_dsc_3d`` as ``[epoch, dsc]`` pairs, ``lr`` per iteration), ``best_epoch``,
        ``epochs_run``, ``stopped_early``, ``iterations``, ``trainable_params``, the chosen
        ``train_slices`` / ``val_patients``, slice counts, ``seconds`` and ``config``.
    """
    seed = cfg.seed + repeat
    split = pick_fewshot(rows, cfg.k_patients, cfg.n_val_patients, seed, val_slices=cfg.val_slices_per_patient)
    dev = _device(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_factory().to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    g = torch.Generator().manual_seed(seed)

    # training images at image_size; masks at image_size too, cropped down to out_size
    tr_x, tr_m = load_slices(split["train"], cfg.image_size, cfg.image_size)
    va_x, va_m = load_slices(split["val"], cfg.image_size, cfg.out_size) if split["val"] else (None, None)
    va_ids = [str(r["patient_id"]) for r in split["val"]]

    loss_fn = DiceCELoss(sigmoid=True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=cfg.weight_decay)
    n = len(tr_x)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = cfg.epochs * per_epoch
    curves: dict[str, list] = {"train_loss": [], "val_dsc_3d": [], "lr": []}
    best, best_epoch, best_state, it, stopped, epoch = -math.inf, -1, None, 0, False, 0
    t0 = time.perf_counter()
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        order, losses = torch.randperm(n, generator=g), []
        for s in range(0, n, cfg.batch_size):
            idx = order[s:s + cfg.batch_size]
            x, m = random_crop_rotate(tr_x[idx].float() / 255, tr_m[idx, None].float(), cfg.out_size, g,
                                      cfg.crop_scale, cfg.rotation_deg)
            lr = fewshot_lr(it, total, cfg.lr, cfg.warmup_iters, cfg.poly_power)
            for group in opt.param_groups:
                group["lr"] = lr
            loss = loss_fn(_logits(model, x.to(dev), cfg.out_size), m.to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            curves["lr"].append(lr)
            losses.append(loss.item())
            it += 1
        curves["train_loss"].append(float(np.mean(losses)))
        if va_x is not None and (epoch % cfg.val_every == 0 or epoch == cfg.epochs):
            pred = predict(model, va_x, cfg.out_size, cfg.eval_batch_size).numpy()
            score = dice_3d(pred, va_m.numpy(), va_ids).mean
            curves["val_dsc_3d"].append([epoch, score])
            if score > best:
                best, best_epoch = score, epoch
                # frozen parameters never change: keeping the trainable ones is enough
                best_state = {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}
            if epoch >= cfg.min_epochs and epoch - best_epoch >= cfg.patience:
                stopped = True
                break
    epochs_run = epoch if cfg.epochs else 0
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    t_train = time.perf_counter() - t0

    t0 = time.perf_counter()
    pred, target = _predict_rows(model, split["test_all"], cfg)
    fg = np.array([bool(r["has_foreground"]) for r in split["test_all"]], dtype=bool)
    metrics = {"best_val_dsc_3d": best if best_state is not None else float("nan")}
    metrics.update(_seg_metrics(pred[fg], target[fg], split["test"], cfg.nsd_tolerance, "test"))
    metrics.update(_seg_metrics(pred, target, split["test_all"], cfg.nsd_tolerance, "test_all"))
    t_test = time.perf_counter() - t0
    return {
        "repeat": repeat, "seed": seed, "metrics": metrics, "curves": curves,
        "best_epoch": best_epoch if best_state is not None else None, "epochs_run": epochs_run,
        "stopped_early": stopped, "iterations": it,
        "trainable_params": int(sum(p.numel() for p in params)),
        "train_slices": [r.get("slice_id", f"{r['patient_id']}:{r['slice_index']}") for r in split["train"]],
        "val_patients": sorted(set(va_ids)),
        "n_val_slices": len(split["val"]), "n_test_slices": len(split["test"]),
        "n_test_slices_all": len(split["test_all"]),
        "seconds": {"train": t_train, "test": t_test}, "config": asdict(cfg),
    }


def run_fewshot(model_factory: Callable[[], nn.Module], rows: list[dict], cfg: FewShotConfig) -> dict:
    """``cfg.repeats`` repeats (seeds ``cfg.seed + r``) of :func:`train_fewshot`.

    Returns ``{"repeats": [per-repeat results], "summary": {metric: {"mean", "std", "values"}}}``
    for the scalar metrics in :data:`METRICS`; ``std`` is the sample std (ddof 1, NaN for one
    repeat, as the catalog stores it), NaNs (e.g. no validation set) are left out of mean and std.
    """
    results = [train_fewshot(model_factory, rows, cfg, r) for r in range(cfg.repeats)]
    summary = {m: mean_sd([float(r["metrics"][m]) for r in results]) for m in METRICS}
    return {"repeats": results, "summary": summary}
