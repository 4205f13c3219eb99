"""3D classification with a zoo volume encoder: fine-tuning or a linear probe, k-fold cross-validated.

Each case's whole field of view is read (per-channel robust min-max, as tasks/evaluation/finetune3d.py)
and resized to ``roi``³ (trilinear where an axis grows, area averaging where it shrinks, as
tasks/evaluation/volume_embed.py; aspect ratio not kept). The network is
:class:`models.seg3d.ClassifierNet3d`: every feature map's global average, concatenated, into a
linear layer (or a small MLP).

- ``mode='finetune'``: encoder and head trained together (encoder at ``encoder_lr``) with
  cross-entropy, AdamW, warm-up + cosine, random flips, ``iterations`` steps of ``batch_size``.
- ``mode='linear'``: a linear probe — the frozen encoder's pooled features are computed once,
  z-scored with the training fold's statistics, and a linear layer is trained full-batch.

Cross-validation runs over the rows' ``fold`` column: each fold is the test set once, the
others train; a patient with cases in the test fold never trains (its other cases are dropped
from that fold's training set and counted). Metrics per fold: AUROC (binary: of the second
class, classes sorted; multi-class: macro one-vs-rest, ``sklearn.metrics.roc_auc_score``),
accuracy and balanced accuracy; reported as mean and sample std over folds (each fold's values
go to ``evaluation_repeats``, repeat = fold, seed = seed + fold).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from mrifoundry.models.seg3d import build_classifier3d
from mrifoundry.tasks.evaluation.finetune3d import as_encoder, load_image, pick_train_patients
from mrifoundry.tasks.evaluation.repeats import mean_sd
from mrifoundry.tasks.evaluation.train3d import autocast_for, device_for, train_loop

__all__ = ["Classify3dConfig", "METRICS", "auroc", "balanced_accuracy", "classification_metrics", "cross_validate",
           "label_fraction_sweep", "load_inputs", "roc_points", "volume_input"]

METRICS = ("auroc", "accuracy", "balanced_accuracy")


@dataclass(frozen=True)
class Classify3dConfig:
    """``mode``: 'finetune' | 'linear'; ``hidden`` > 0: an MLP head (fine-tuning only);
    ``label_fraction``: the seeded share of each training fold's patients."""

    roi: int = 96
    mode: str = "finetune"
    batch_size: int = 4
    iterations: int = 1000
    lr: float = 1e-4
    encoder_lr: float | None = None
    weight_decay: float = 1e-4
    warmup_iters: int = 50
    hidden: int = 0
    dropout: float = 0.0
    seed: int = 0
    device: str | None = None
    label_fraction: float = 1.0
    flip: bool = True
    amp: bool = True
    eval_batch_size: int = 4

    @classmethod
    def tiny(cls, **overrides) -> Classify3dConfig:
        base = cls(roi=32, batch_size=4, iterations=20, lr=1e-3, warmup_iters=0, amp=False, eval_batch_size=8)
        return replace(base, **overrides)


# ------------------------------------------------------------------ inputs

def volume_input(row: dict, roi: int) -> torch.Tensor:
    """float32 [C, roi, roi, roi] in [0, 1]: the whole image, scaled per channel and resized."""
    data, _, _ = load_image(row["image_file"], row.get("n_channels"))
    x = torch.as_tensor(data)[None]
    grown = tuple(max(n, roi) for n in data.shape[1:])
    if grown != tuple(data.shape[1:]):
        x = F.interpolate(x, size=grown, mode="trilinear", align_corners=False)
    if grown != (roi,) * 3:
        x = F.interpolate(x, size=(roi,) * 3, mode="area")
    return x[0].clamp_(0.0, 1.0)


def load_inputs(rows: Sequence[dict], roi: int) -> dict[str, torch.Tensor]:
    """``{case_id: float16 [C, roi³]}`` (half precision: the cache of a whole dataset stays small)."""
    return {str(r["case_id"]): volume_input(r, roi).half() for r in rows}


# ------------------------------------------------------------------ metrics

def auroc(y: np.ndarray, probs: np.ndarray, n_classes: int) -> float:
    """Binary: AUROC of ``probs[:, 1]`` for class 1; multi-class: macro one-vs-rest
    (``roc_auc_score(multi_class='ovr', average='macro')``) over the classes present in ``y``
    (all of them in sklearn's call when all are present). NaN when ``y`` holds one class."""
    from sklearn.metrics import roc_auc_score
    y = np.asarray(y)
    present = np.unique(y)
    if len(present) < 2:
        return float("nan")
    if n_classes == 2:
        return float(roc_auc_score(y, probs[:, 1]))
    if len(present) == n_classes:
        return float(roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=list(range(n_classes))))
    return float(np.mean([roc_auc_score(y == k, probs[:, k]) for k in present]))


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (sklearn's balanced_accuracy_score, without its
    warning when ``pred`` holds a class ``y`` lacks)."""
    y, pred = np.asarray(y), np.asarray(pred)
    return float(np.mean([np.mean(pred[y == k] == k) for k in np.unique(y)]))


def classification_metrics(y: np.ndarray, probs: np.ndarray, n_classes: int) -> dict[str, float]:
    pred = probs.argmax(1)
    return {"auroc": auroc(y, probs, n_classes), "accuracy": float(np.mean(pred == y)),
            "balanced_accuracy": balanced_accuracy(y, pred)}


def roc_points(y: np.ndarray, probs: np.ndarray, n_classes: int) -> tuple[list[float], list[float]] | None:
    """(fpr, tpr) — binary: of class 1; multi-class: micro-averaged one-vs-rest. None for one class."""
    from sklearn.metrics import roc_curve
    if len(np.unique(y)) < 2:
        return None
    if n_classes == 2:
        fpr, tpr, _ = roc_curve(y, probs[:, 1])
    else:
        onehot = np.eye(n_classes, dtype=int)[np.asarray(y)]
        fpr, tpr, _ = roc_curve(onehot.ravel(), probs.ravel())
    return fpr.tolist(), tpr.tolist()


# ------------------------------------------------------------------ training

def _stack(inputs: dict[str, torch.Tensor], ids: Sequence[str]) -> torch.Tensor:
    return torch.stack([inputs[i] for i in ids]).float()


@torch.no_grad()
def _in_batches(fn, x_all: torch.Tensor, cfg: Classify3dConfig, dev: torch.device) -> torch.Tensor:
    """``fn`` over ``eval_batch_size`` chunks of ``x_all`` (autocast as in training), float32 on the CPU."""
    out = []
    for s in range(0, len(x_all), cfg.eval_batch_size):
        with autocast_for(dev, cfg):
            out.append(fn(x_all[s:s + cfg.eval_batch_size].to(dev)).float().cpu())
    return torch.cat(out)


def _predict(model, x_all: torch.Tensor, cfg: Classify3dConfig, dev: torch.device) -> np.ndarray:
    model.eval()
    return _in_batches(lambda x: torch.softmax(model(x).float(), 1), x_all, cfg, dev).numpy()


class _Epochs:
    """Batches of ``batch_size`` through seeded permutations of the training cases (a new one when
    the rest would not fill a batch)."""

    def __init__(self, x: torch.Tensor, y: np.ndarray, batch_size: int):
        self.x, self.y, self.batch_size = x, y, batch_size
        self.order, self.pos = None, 0

    def __call__(self, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        if self.order is None:   # the first permutation is drawn before the check, as it always was
            self.order = rng.permutation(len(self.x))
        if self.pos + self.batch_size > len(self.order):
            self.order, self.pos = rng.permutation(len(self.x)), 0
        idx = self.order[self.pos:self.pos + self.batch_size]
        self.pos += len(idx)
        return self.x[idx], torch.as_tensor(self.y[idx])


def _finetune_fold(encoder, n_classes, x_tr, y_tr, x_te, cfg, dev,
                   progress=None) -> tuple[np.ndarray, list[float], int]:
    model = build_classifier3d(encoder, n_classes, hidden=cfg.hidden, dropout=cfg.dropout).to(dev)
    curve = train_loop(model, _Epochs(x_tr, y_tr, cfg.batch_size), F.cross_entropy, cfg, dev, flip=cfg.flip,
                       progress=progress)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return _predict(model, x_te, cfg, dev), curve["loss"], int(params)


def _pooled(encoder, x_all: torch.Tensor, cfg: Classify3dConfig, dev: torch.device) -> torch.Tensor:
    encoder.eval()
    return _in_batches(encoder.pooled, x_all, cfg, dev)


def _linear_fold(feats_tr, y_tr, feats_te, n_classes, cfg, progress=None) -> tuple[np.ndarray, list[float], int]:
    mu, sd = feats_tr.mean(0), feats_tr.std(0, unbiased=False).clamp_min(1e-6)
    a, b = (feats_tr - mu) / sd, (feats_te - mu) / sd
    head = torch.nn.Linear(a.shape[1], n_classes)
    y = torch.as_tensor(y_tr)
    # full batch on the CPU (the features are small), no flips: the pooled features have no axes
    curve = train_loop(head, lambda rng: (a, y), F.cross_entropy, cfg, torch.device("cpu"), flip=False,
                       groups=[{"name": "head", "params": list(head.parameters()), "lr": cfg.lr}], progress=progress)
    with torch.no_grad():
        return torch.softmax(head(b), 1).numpy(), curve["loss"], sum(p.numel() for p in head.parameters())


def _fresh_encoder(factory: Callable[[], object], seed: int):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return as_encoder(factory())


def cross_validate(encoder_factory: Callable[[], object], rows: Sequence[dict], cfg: Classify3dConfig,
                   inputs: dict[str, torch.Tensor] | None = None, *,
                   progress: Callable[[str], None] | None = None) -> dict:
    """k-fold cross-validation over the ``fold`` column (every fold present is the test set once).

    Args:
        encoder_factory: a fresh :class:`models.encoders3d.Encoder3d` (or a volume zoo model)
            per fold, called under ``torch.manual_seed(cfg.seed)`` (once in all for ``linear``).
        rows: ``labelled_volumes`` rows with ``class_label`` and ``fold``.
        cfg: settings.
        inputs: :func:`load_inputs` of ``rows`` at ``cfg.roi`` (read here when None).
        progress: called with ``fold <f>: <line of train3d.train_loop>`` during training.

    Returns:
        ``summary`` ({metric: {mean, std, values}} over folds), ``folds`` (per fold: ``fold``,
        metrics, ``train_cases``, ``test_cases``, ``train_patients``, ``dropped_train_cases``
        (cases of test patients in other folds), ``roc``, ``curve``, ``probs``), ``classes``,
        ``n_cases``, ``seconds``, ``config``.

    Raises:
        ValueError: fewer than two classes or two folds, a row without class or fold, bad mode.
    """
    if cfg.mode not in ("finetune", "linear"):
        raise ValueError(f"mode must be 'finetune' or 'linear', got {cfg.mode!r}")
    bad = [r["case_id"] for r in rows if r.get("class_label") is None or r.get("fold") is None]
    if bad:
        raise ValueError(f"{len(bad)} rows without class_label or fold, e.g. {bad[:3]}")
    classes = sorted({str(r["class_label"]) for r in rows})
    folds = sorted({int(r["fold"]) for r in rows})
    if len(classes) < 2 or len(folds) < 2:
        raise ValueError(f"need ≥ 2 classes and ≥ 2 folds, got {classes} and folds {folds}")
    t0 = time.perf_counter()
    inputs = inputs if inputs is not None else load_inputs(rows, cfg.roi)
    ids = [str(r["case_id"]) for r in rows]
    y_all = np.array([classes.index(str(r["class_label"])) for r in rows])
    dev = device_for(cfg)
    feats = None
    if cfg.mode == "linear":
        feats = _pooled(_fresh_encoder(encoder_factory, cfg.seed).to(dev), _stack(inputs, ids), cfg, dev)
    out = []
    for f in folds:
        te = [i for i, r in enumerate(rows) if int(r["fold"]) == f]
        test_patients = {str(rows[i]["patient_id"]) for i in te}
        others = [i for i, r in enumerate(rows) if int(r["fold"]) != f]
        dropped = [ids[i] for i in others if str(rows[i]["patient_id"]) in test_patients]
        pool = [rows[i] for i in others if ids[i] not in dropped]
        keep = set(pick_train_patients(pool, cfg.label_fraction, cfg.seed + f, split=None)) if pool else set()
        tr = [i for i in others if ids[i] not in dropped and str(rows[i]["patient_id"]) in keep]
        if not tr:
            raise ValueError(f"fold {f}: no training cases left")
        say = None if progress is None else (lambda line, f=f: progress(f"fold {f}: {line}"))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed + f)
            if feats is not None:
                probs, curve, params = _linear_fold(feats[tr], y_all[tr], feats[te], len(classes), cfg, say)
            else:
                enc = _fresh_encoder(encoder_factory, cfg.seed)
                probs, curve, params = _finetune_fold(enc, len(classes), _stack(inputs, [ids[i] for i in tr]),
                                                      y_all[tr], _stack(inputs, [ids[i] for i in te]), cfg, dev, say)
        m = classification_metrics(y_all[te], probs, len(classes))
        out.append({"fold": f, **m, "n_train": len(tr), "n_test": len(te), "train_cases": [ids[i] for i in tr],
                    "test_cases": [ids[i] for i in te], "train_patients": sorted(keep),
                    "dropped_train_cases": dropped, "roc": roc_points(y_all[te], probs, len(classes)),
                    "curve": curve, "trainable_params": params,
                    "probs": {ids[i]: p.tolist() for i, p in zip(te, probs)}})
    summary = {k: mean_sd([float(r[k]) for r in out]) for k in METRICS}
    return {"summary": summary, "folds": out, "classes": classes, "n_cases": len(rows),
            "seconds": time.perf_counter() - t0, "config": asdict(cfg)}


def label_fraction_sweep(encoder_factory: Callable[[], object], rows: Sequence[dict], cfg: Classify3dConfig,
                         fractions: Sequence[float]) -> dict[float, dict]:
    """:func:`cross_validate` at each label fraction; the inputs are read once."""
    inputs = load_inputs(rows, cfg.roi)
    return {float(f): cross_validate(encoder_factory, rows, replace(cfg, label_fraction=float(f)), inputs)
            for f in fractions}
