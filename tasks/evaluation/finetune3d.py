"""3D segmentation fine-tuning of a zoo volume encoder, as plain functions.

Protocol: a :class:`models.seg3d.SegNet3d` (the encoder from ``encoder_factory`` plus a SwinUNETR
or UNETR decoder) is trained on random ``roi``³ crops of the training cases — centres drawn
foreground:background ``pos:neg`` (MONAI ``RandCropByPosNegLabeld``), random flips on each axis
— with Dice + cross-entropy (MONAI ``DiceCELoss``, softmax over background + labels, Dice pooled
over the batch), AdamW, a linear warm-up then cosine decay, for a fixed number of iterations.
With ``val_every`` > 0 the network is scored every ``val_every`` iterations on validation patients
(sliding windows, mean DSC over labels and cases) and the best weights are tested (train3d's hook);
else the last weights. Test cases are predicted whole by Gaussian-weighted sliding windows
(``monai.inferers.sliding_window_inference``) and scored per label value: DSC, NSD at
``nsd_tolerance`` mm, HD95 in mm and the ATLAS lesion-wise F1 (tasks/evaluation/metrics.py).

Splits and scoring (tasks/evaluation/seg3d_protocol.py): ``folds`` None/0 trains on the ``train``
split and tests on ``test`` (validation: the ``val`` split, else a seeded ``val_fraction`` of the
training patients); ``folds=k`` runs k-fold over the ``fold`` column — each fold is tested once by
a network trained on the other folds' patients (minus a seeded ``val_fraction`` for validation
when ``val_every`` > 0; patients with a case in the test fold never train), at seed ``seed + fold``.

Inputs are ``labelled_volumes`` rows (``case_id``, ``patient_id``, ``split``, ``fold``,
``image_file`` NIfTI [X, Y, Z] or [X, Y, Z, C], ``label_file`` uint8 label map on the image's
grid, ``n_channels``, ``zooms`` 'AxBxC'). Images are scaled per channel as the volume recipes
scale them (tasks/data/volume_io.py: robust min-max between the 0.5 and 99.5 percentiles, to
[0, 1]). Everything random is seeded from ``cfg.seed``.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mrifoundry.atomic import atomic_path
from mrifoundry.models.encoders3d import Encoder3d
from mrifoundry.models.seg3d import build_segmenter3d
from mrifoundry.tasks.evaluation.metrics import dice
from mrifoundry.tasks.evaluation.seg3d_protocol import (SEG_METRICS, case_metrics, fold_plan, hold_out_patients,
                                                     labels_of, masks_of, summarise_cases, summarise_folds)
from mrifoundry.tasks.evaluation.train3d import autocast_for, device_for, train_loop, warmup_cosine

__all__ = ["Finetune3dConfig", "SEG_METRICS", "as_encoder", "autocast_for", "case_metrics", "device_for",
           "label_fraction_sweep", "load_case", "load_image", "parse_zooms", "pick_train_patients", "predict_volume",
           "run_finetune3d", "summarise_cases", "warmup_cosine"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Finetune3dConfig:
    """Settings of one fine-tuning run; ``tiny()`` for tests and demos (seconds on a CPU).

    ``encoder_lr`` None: the encoder trains at ``lr``; ``freeze``: the encoder is frozen (decoder
    only). ``labels`` None: every non-zero value of the training label maps. ``label_fraction``:
    the seeded share of training *patients* used (at least one). ``roi`` must be a multiple of
    the encoder's deepest stride (32 for Swin; a Swin with the SwinUNETR decoder needs ≥ 64 to
    train, its /32 map being one voxel at 32).
    """

    roi: int = 96
    batch_size: int = 2
    iterations: int = 2000
    lr: float = 1e-4
    encoder_lr: float | None = None
    weight_decay: float = 1e-5
    warmup_iters: int = 100
    freeze: bool = False
    decoder: str = "swinunetr"
    feature_size: int = 16          # UNETR decoder width f
    seed: int = 0
    device: str | None = None       # None: cuda when available
    sw_batch_size: int = 4
    overlap: float = 0.5
    nsd_tolerance: float = 1.0      # mm
    label_fraction: float = 1.0
    pos: float = 1.0
    neg: float = 1.0
    flip: bool = True
    amp: bool = True                # bf16 autocast on CUDA only
    labels: tuple[int, ...] | None = None
    regions: bool = False           # nested regions (datasets.nested_regions): score 'label ≥ v' per v
    folds: int | None = None        # None/0: train split → test split; k: k-fold over the rows' `fold`
    val_every: int = 200            # validate every n iterations and test the best weights; 0: the last
    val_fraction: float = 0.2       # share of training patients held out for validation (no `val` split)

    @classmethod
    def tiny(cls, **overrides) -> Finetune3dConfig:
        base = cls(roi=32, batch_size=2, iterations=40, lr=3e-3, warmup_iters=0, feature_size=8, sw_batch_size=2,
                   amp=False, val_every=0)
        return replace(base, **overrides)


# ------------------------------------------------------------------ data

def parse_zooms(zooms: str | None) -> tuple[float, float, float] | None:
    """'1.0x1.0x1.2' → (1.0, 1.0, 1.2); None or '' → None."""
    if not zooms:
        return None
    parts = tuple(float(z) for z in str(zooms).lower().split("x"))
    if len(parts) != 3 or any(not math.isfinite(z) or z <= 0 for z in parts):
        raise ValueError(f"zooms must read 'AxBxC' with positive numbers, got {zooms!r}")
    return parts  # type: ignore[return-value]


def load_image(path: str | Path, n_channels: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple]:
    """(float32 [C, X, Y, Z] scaled per channel to [0, 1] between the 0.5 and 99.5 percentiles,
    affine, header zooms). 3D files give C = 1, 4D files are channels last.

    Raises:
        ValueError: not 3D/4D, or ``n_channels`` given and different.
    """
    from monai.transforms import ScaleIntensityRangePercentiles
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 3:
        data = data[None]
    elif data.ndim == 4:
        data = np.moveaxis(data, -1, 0)
    else:
        raise ValueError(f"{Path(path).name}: expected [X, Y, Z] or [X, Y, Z, C], got shape {data.shape}")
    if n_channels is not None and data.shape[0] != int(n_channels):
        raise ValueError(f"{Path(path).name}: {data.shape[0]} channels, the row says {n_channels}")
    scale = ScaleIntensityRangePercentiles(lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True, channel_wise=True)
    out = np.asarray(scale(np.nan_to_num(data)), dtype=np.float32)
    return np.nan_to_num(out, nan=0.0), img.affine, tuple(float(z) for z in img.header.get_zooms()[:3])


def load_case(row: dict) -> dict:
    """A row → ``{"case_id", "image" [C,X,Y,Z] float32, "label" [X,Y,Z] uint8 | None, "spacing", "affine"}``;
    the spacing is the row's ``zooms``, else the image header's.

    Raises:
        ValueError: the label map is not on the image's grid.
    """
    image, affine, header_zooms = load_image(row["image_file"], row.get("n_channels"))
    label = None
    if row.get("label_file"):
        label = np.asarray(nib.load(str(row["label_file"])).dataobj).astype(np.uint8)
        if label.shape != image.shape[1:]:
            raise ValueError(f"case {row['case_id']!r}: label map {label.shape} is not on the image grid "
                             f"{image.shape[1:]}")
    return {"case_id": str(row["case_id"]), "image": image, "label": label, "affine": affine,
            "spacing": parse_zooms(row.get("zooms")) or header_zooms}


def pick_train_patients(rows: Sequence[dict], fraction: float, seed: int, split: str | None = "train") -> list[str]:
    """A seeded ``fraction`` of the patients of ``split`` rows (None: all rows), at least one,
    sorted. Nested: for one seed, a smaller fraction's patients are a subset of a larger one's.

    Raises:
        ValueError: fraction outside (0, 1], or no patients.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"label fraction must be in (0, 1], got {fraction}")
    patients = sorted({str(r["patient_id"]) for r in rows if split is None or r["split"] == split})
    if not patients:
        raise ValueError(f"no {split or 'any'} patients to pick from")
    order = np.random.default_rng(seed).permutation(len(patients))
    n = max(1, int(round(fraction * len(patients))))
    return sorted(patients[i] for i in order[:n])


def as_encoder(made) -> Encoder3d:
    """An :class:`Encoder3d`, or the ``.encoder`` of a zoo model (``VolumeZooModel``).

    Raises:
        TypeError: neither.
    """
    if isinstance(made, Encoder3d):
        return made
    if isinstance(getattr(made, "encoder", None), Encoder3d):
        return made.encoder
    raise TypeError(f"the encoder factory must return an Encoder3d or a volume zoo model, got {type(made).__name__}")


def _lut(labels: Sequence[int]) -> np.ndarray:
    """uint8 value → class index (0: background; values outside ``labels`` count as background)."""
    lut = np.zeros(256, np.int64)
    for i, v in enumerate(labels, start=1):
        lut[int(v)] = i
    return lut


# ------------------------------------------------------------------ training

class _Cropper:
    """Seeded pos/neg random crops of one case at a time (foreground indices computed once per case)."""

    def __init__(self, cases: list[dict], lut: np.ndarray, cfg: Finetune3dConfig):
        from monai.transforms import RandCropByPosNegLabeld, SpatialPadd
        from monai.transforms.utils import map_binary_to_indices
        roi = (cfg.roi,) * 3
        pad = SpatialPadd(keys=["image", "label"], spatial_size=roi)
        self.items = []
        for c in cases:
            d = pad({"image": c["image"], "label": lut[c["label"]][None].astype(np.int64)})
            fg, bg = map_binary_to_indices(d["label"])
            # a case without foreground: centres anywhere (no warning about missing foreground)
            self.items.append({**d, "fg": fg if len(fg) else bg, "bg": bg if len(bg) else fg})
        self.crop = RandCropByPosNegLabeld(keys=["image", "label"], label_key="label", spatial_size=roi, pos=cfg.pos,
                                           neg=cfg.neg, num_samples=1, fg_indices_key="fg", bg_indices_key="bg")
        self.crop.set_random_state(cfg.seed)

    def __call__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.crop(self.items[i])[0]
        return torch.as_tensor(np.asarray(out["image"])), torch.as_tensor(np.asarray(out["label"]))


def _train(model, cases: list[dict], lut: np.ndarray, cfg: Finetune3dConfig, dev: torch.device,
           progress: Callable[[str], None] | None = None, validate: Callable[[int], float] | None = None) -> dict:
    from monai.losses import DiceCELoss
    # batch Dice: a background-only crop does not score its empty foreground channel as a miss
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
    crops = _Cropper(cases, lut, cfg)

    def batch(rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        xs, ys = zip(*(crops(int(rng.integers(len(cases)))) for _ in range(cfg.batch_size)))
        return torch.stack(xs), torch.stack(ys)

    return train_loop(model, batch, loss_fn, cfg, dev, flip=cfg.flip, flip_target=True, progress=progress,
                      validate=validate, val_every=cfg.val_every)


def _validator(model, cases: list[dict], labels: Sequence[int], cfg: Finetune3dConfig) -> Callable[[int], float]:
    """The checkpoint score: mean over validation cases of the mean DSC over labels."""
    def score(_iteration: int) -> float:
        return float(np.mean([np.mean([dice(*masks_of(predict_volume(model, c["image"], labels, cfg), c["target"],
                                                        v, cfg.regions)) for v in labels]) for c in cases]))
    return score


@torch.no_grad()
def predict_volume(model, image: np.ndarray, labels: Sequence[int], cfg: Finetune3dConfig) -> np.ndarray:
    """Label map uint8 [X, Y, Z] of a whole [C, X, Y, Z] image: Gaussian-weighted sliding windows
    of ``roi``³ (``overlap``, ``sw_batch_size``; a side shorter than ``roi`` is padded), arg-max,
    class index → label value."""
    from monai.inferers import sliding_window_inference
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    x = torch.as_tensor(image)[None].to(dev)
    with autocast_for(dev, cfg):
        logits = sliding_window_inference(x, (cfg.roi,) * 3, cfg.sw_batch_size, model, overlap=cfg.overlap,
                                          mode="gaussian")
    model.train(was)
    idx = torch.as_tensor(logits).float().argmax(1)[0].cpu().numpy()
    values = np.array([0, *labels], np.uint8)
    return values[idx]


# ------------------------------------------------------------------ the run

def _write_prediction(pred: np.ndarray, affine: np.ndarray, folder: Path, case_id: str) -> Path:
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in case_id)
    path = folder / f"{safe}.nii.gz"
    with atomic_path(path, keep_suffix=True) as tmp:   # the temp's .nii.gz tells nibabel to gzip
        nib.save(nib.Nifti1Image(pred.astype(np.uint8), affine), str(tmp))
    return path


def _scored(case: dict, labels: Sequence[int]) -> dict:
    """The case with ``target``: its label map with values outside ``labels`` as background."""
    return {**case, "target": np.where(np.isin(case["label"], labels), case["label"], 0)}


def _of(rows: Sequence[dict], patients) -> list[dict]:
    return [r for r in rows if str(r["patient_id"]) in patients]   # the rows of these patients


def _fit_and_test(encoder_factory, train_rows, val_rows, test_rows, labels, cfg: Finetune3dConfig, out_dir,
                  progress) -> dict:
    """Train on ``train_rows`` (best weights on ``val_rows`` when ``cfg.val_every``), test on
    ``test_rows``; ``labels`` None: the values of the training label maps."""
    if not test_rows:
        raise ValueError("no test cases")
    t0 = time.perf_counter()
    train = [load_case(r) for r in train_rows]
    labels = list(labels or cfg.labels or sorted({int(v) for c in train for v in np.unique(c["label"]) if v}))
    if not labels:
        raise ValueError("the training label maps hold no foreground label")
    lut, dev = _lut(labels), device_for(cfg)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder = as_encoder(encoder_factory())
        model = build_segmenter3d(encoder, len(labels) + 1, cfg.decoder, freeze=cfg.freeze,
                                  feature_size=cfg.feature_size).to(dev)
    if cfg.roi % model.strides[-1]:
        raise ValueError(f"roi {cfg.roi} is not a multiple of the encoder's stride {model.strides[-1]}")
    val = [_scored(load_case(r), labels) for r in val_rows] if cfg.val_every > 0 else []
    validate = _validator(model, val, labels, cfg) if val else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        curve = _train(model, train, lut, cfg, dev, progress, validate) if cfg.iterations else {"loss": [], "lr": []}
    t_train = time.perf_counter() - t0
    del train, val
    t0 = time.perf_counter()
    per_case, preds = {}, {}
    for r in test_rows:
        case = _scored(load_case(r), labels)
        pred = predict_volume(model, case["image"], labels, cfg)
        per_case[case["case_id"]] = case_metrics(pred, case["target"], labels, case["spacing"], cfg.nsd_tolerance,
                                                   cfg.regions)
        if out_dir is not None:
            preds[case["case_id"]] = str(_write_prediction(pred, case["affine"], Path(out_dir), case["case_id"]))
    mean, std = summarise_cases(per_case)
    return {"metrics": mean, "std": std, "per_case": per_case, "labels": labels, "curve": curve,
            "best_iteration": curve.get("best_iteration"), "n_train_cases": len(train_rows),
            "n_val_cases": len(val_rows) if validate else 0, "n_test_cases": len(test_rows), "predictions": preds,
            "trainable_params": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
            "seconds": {"train": t_train, "test": time.perf_counter() - t0}}


def run_finetune3d(encoder_factory: Callable[[], object], rows: Sequence[dict], cfg: Finetune3dConfig,
                   out_dir: str | Path | None = None, *, progress: Callable[[str], None] | None = None) -> dict:
    """Fine-tune and test: train split → test split, or k-fold (``cfg.folds``; module docstring).

    Args:
        encoder_factory: returns a fresh :class:`models.encoders3d.Encoder3d` (or anything with
            an ``.encoder``, e.g. a ``VolumeZooModel``), pretrained or not; called under
            ``torch.manual_seed(cfg.seed)`` (per fold: ``seed + fold``), as is the decoder's init.
        rows: ``labelled_volumes`` rows with label maps, all splits.
        cfg: settings; ``iterations=0`` tests the untrained network.
        out_dir: where test predictions are written (``<case_id>.nii.gz``); None: not written.
        progress: called with a line now and then during training (:func:`train3d.train_loop`).

    Returns:
        ``metrics`` (``<dice|nsd|hd95|lesion_f1>_<v>``, ``<…>_mean``: mean over test cases; k-fold: over
        the folds' means), ``std`` (population std over cases; k-fold: sample sd over folds), ``per_case``,
        ``labels``, ``curve`` (``loss``, ``lr``, with validation ``val``, ``best_iteration``; k-fold:
        None), ``best_iteration`` (k-fold: per fold), ``train_patients``, ``val_patients``, ``n_*_cases``,
        ``predictions`` (case → file), ``trainable_params``, ``seconds``, ``config``; k-fold also
        ``folds`` (per fold: ``fold``, ``seed``, ``metrics``, ``std``, patients, counts, ``test_cases``,
        ``dropped_train_cases``, ``best_iteration``, ``curve``) and ``fold_values`` (metric → per fold).

    Raises:
        ValueError: no label maps, train or test cases, no foreground label, a bad roi, a fold count
            the rows do not hold, too few patients for a validation hold-out.
    """
    if not all(r.get("label_file") for r in rows):
        raise ValueError("segmentation fine-tuning needs a label_file in every row")
    if cfg.folds:
        return _cross_validate(encoder_factory, rows, cfg, out_dir, progress)
    pool, val_rows = [r for r in rows if r["split"] == "train"], []
    if cfg.val_every > 0:
        val_rows = [r for r in rows if r["split"] == "val"]
        if not val_rows:   # no val split: a seeded share of the training patients
            held, rest = hold_out_patients(pool, cfg.val_fraction, cfg.seed)
            val_rows, pool = _of(pool, set(held)), _of(pool, set(rest))
    val_patients = sorted({str(r["patient_id"]) for r in val_rows})
    patients = set(pick_train_patients(pool, cfg.label_fraction, cfg.seed))
    res = _fit_and_test(encoder_factory, _of(pool, patients), val_rows, [r for r in rows if r["split"] == "test"],
                        None, cfg, out_dir, progress)
    return {**res, "train_patients": sorted(patients), "val_patients": val_patients, "config": asdict(cfg),
            "folds": None}


def _cross_validate(encoder_factory, rows: Sequence[dict], cfg: Finetune3dConfig, out_dir, progress) -> dict:
    labels = list(cfg.labels) if cfg.labels else labels_of(rows)
    folds, per_case, preds = [], {}, {}
    for plan in fold_plan(rows, int(cfg.folds)):
        f = plan["fold"]
        fcfg = replace(cfg, seed=cfg.seed + f, folds=None)
        pool, val_rows, val_patients = plan["pool"], [], []
        if cfg.val_every > 0:
            val_patients, rest = hold_out_patients(pool, cfg.val_fraction, fcfg.seed)
            val_rows, pool = _of(pool, set(val_patients)), _of(pool, set(rest))
        keep = pick_train_patients(pool, cfg.label_fraction, fcfg.seed, split=None)
        say = None if progress is None else (lambda line, f=f: progress(f"fold {f}: {line}"))
        res = _fit_and_test(encoder_factory, _of(pool, set(keep)), val_rows, plan["test"], labels, fcfg, out_dir,
                            say)
        per_case.update(res["per_case"])
        preds.update(res["predictions"])
        folds.append({"fold": f, "seed": fcfg.seed, "train_patients": keep, "val_patients": val_patients,
                      "test_cases": [str(r["case_id"]) for r in plan["test"]], "dropped_train_cases": plan["dropped"],
                      **{k: res[k] for k in ("metrics", "std", "n_train_cases", "n_val_cases", "n_test_cases",
                                             "best_iteration", "curve", "trainable_params", "seconds")}})
    mean, sd, values = summarise_folds([fold["metrics"] for fold in folds])
    return {"metrics": mean, "std": sd, "fold_values": values, "folds": folds, "per_case": per_case,
            "labels": labels, "curve": None, "best_iteration": [fold["best_iteration"] for fold in folds],
            "train_patients": sorted({p for fold in folds for p in fold["train_patients"]}),
            "val_patients": sorted({p for fold in folds for p in fold["val_patients"]}),
            "n_train_cases": sum(fold["n_train_cases"] for fold in folds),
            "n_val_cases": sum(fold["n_val_cases"] for fold in folds), "n_test_cases": len(per_case),
            "predictions": preds, "trainable_params": folds[0]["trainable_params"],
            "seconds": {k: sum(fold["seconds"][k] for fold in folds) for k in ("train", "test")},
            "config": asdict(cfg)}


def label_fraction_sweep(encoder_factory: Callable[[], object], rows: Sequence[dict], cfg: Finetune3dConfig,
                         fractions: Sequence[float], out_dir: str | Path | None = None) -> dict[float, dict]:
    """:func:`run_finetune3d` at each label fraction (same seed, so the patient sets are nested);
    predictions under ``out_dir/frac<f>``."""
    return {float(f): run_finetune3d(encoder_factory, rows, replace(cfg, label_fraction=float(f)),
                                     None if out_dir is None else Path(out_dir) / f"frac{float(f):g}")
            for f in fractions}
