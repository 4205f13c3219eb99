"""The protocol of 3D segmentation fine-tuning (tasks/evaluation/finetune3d.py) apart from the
network: per-case scores (DSC, NSD, HD95, lesion-wise F1 per label; tasks/evaluation/metrics.py),
their summary over cases and over folds, and the patient-level plans — the validation hold-out and
the k folds of ``labelled_volumes.fold``.

Rows are ``labelled_volumes`` rows (``case_id``, ``patient_id``, ``fold``, ``label_file``,
``label_values``); splits are decided per patient, so no patient is on two sides of a split.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

import nibabel as nib
import numpy as np

from mrifoundry.errors import UsageError
from mrifoundry.tasks.evaluation.metrics import dice, hd95, lesion_f1, surface_dice

__all__ = ["SEG_METRICS", "case_metrics", "fold_plan", "hold_out_patients", "labels_of", "masks_of",
           "summarise_cases", "summarise_folds"]

SEG_METRICS = ("dice", "nsd", "hd95", "lesion_f1")


def masks_of(pred: np.ndarray, target: np.ndarray, v: int, regions: bool) -> tuple[np.ndarray, np.ndarray]:
    """The masks label value ``v`` is scored on: ``== v``, or ``≥ v`` for nested regions."""
    return (pred >= v, target >= v) if regions else (pred == v, target == v)


def case_metrics(pred: np.ndarray, target: np.ndarray, labels: Sequence[int], spacing, tolerance: float,
                 regions: bool = False) -> dict:
    """``{"dice_<v>", "nsd_<v>", "hd95_<v>", "lesion_f1_<v>"}`` per label value ``v``
    (tasks.evaluation.metrics: dice, surface_dice at ``tolerance`` and hd95, both in the units of
    ``spacing``, lesion_f1), plus their means over labels (``<metric>_mean``).
    ``regions``: the values are nested regions, so ``v`` is scored as ``label ≥ v`` (BraTS WT/TC/ET)."""
    out = {}
    for v in labels:
        p, t = masks_of(pred, target, v, regions)
        out[f"dice_{v}"] = dice(p, t)
        out[f"nsd_{v}"] = surface_dice(p, t, tolerance=tolerance, spacing=spacing)
        out[f"hd95_{v}"] = hd95(p, t, spacing=spacing)
        out[f"lesion_f1_{v}"] = lesion_f1(p, t)
    for m in SEG_METRICS:
        out[f"{m}_mean"] = float(np.mean([out[f"{m}_{v}"] for v in labels]))
    return out


def summarise_cases(per_case: dict[str, dict]) -> tuple[dict, dict]:
    """(mean, population std) over cases of every metric of :func:`case_metrics`."""
    keys = list(next(iter(per_case.values()))) if per_case else []
    vals = {k: [c[k] for c in per_case.values()] for k in keys}
    return ({k: float(np.mean(v)) for k, v in vals.items()}, {k: float(np.std(v)) for k, v in vals.items()})


def labels_of(rows: Sequence[dict]) -> list[int]:
    """Foreground values of every row: its ``label_values`` (JSON), else its label map read."""
    vals: set[int] = set()
    for r in rows:
        got = r.get("label_values")
        got = json.loads(got) if isinstance(got, str) else got
        if got is None:
            got = np.unique(np.asarray(nib.load(str(r["label_file"])).dataobj)).tolist()
        vals |= {int(v) for v in got if int(v)}
    return sorted(vals)


def hold_out_patients(rows: Sequence[dict], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(validation patients, the other patients), both sorted: a seeded share ``fraction`` of the
    rows' patients, at least one, and at least one left to train.

    Raises:
        UsageError (a ValueError): fraction outside (0, 1), or fewer than two patients.
    """
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"validation fraction must be in (0, 1), got {fraction}")
    patients = sorted({str(r["patient_id"]) for r in rows})
    if len(patients) < 2:
        raise UsageError(f"a validation hold-out needs ≥ 2 training patients, got {len(patients)} "
                         f"(val_every 0 tests the last weights)")
    # its own stream: the label-fraction pick (finetune3d.pick_train_patients) uses default_rng(seed)
    order = np.random.default_rng([seed, 1]).permutation(len(patients))
    n = min(max(1, int(round(fraction * len(patients)))), len(patients) - 1)
    val = sorted(patients[i] for i in order[:n])
    return val, sorted(set(patients) - set(val))


def fold_plan(rows: Sequence[dict], k: int) -> list[dict]:
    """Per fold value f (sorted): ``{"fold", "test" (rows of fold f), "pool" (rows of the other
    folds whose patient has no case in fold f), "dropped" (case ids of test patients in other folds,
    left out of training)}``. Every row is in exactly one ``test``.

    Raises:
        UsageError (a ValueError): a row without ``fold``, or the rows hold other than ``k`` distinct folds.
    """
    missing = [str(r["case_id"]) for r in rows if r.get("fold") is None]
    if missing:
        raise UsageError(f"{len(missing)} rows without a fold, e.g. {missing[:3]} (ingest-downstream --folds)")
    folds = sorted({int(r["fold"]) for r in rows})
    if k < 2 or len(folds) != k:
        raise UsageError(f"folds={k}, but the dataset's rows hold {len(folds)} folds {folds} "
                         f"(ingest-downstream --folds sets them)")
    plan = []
    for f in folds:
        test = [r for r in rows if int(r["fold"]) == f]
        test_patients = {str(r["patient_id"]) for r in test}
        others = [r for r in rows if int(r["fold"]) != f]
        plan.append({"fold": f, "test": test,
                     "pool": [r for r in others if str(r["patient_id"]) not in test_patients],
                     "dropped": [str(r["case_id"]) for r in others if str(r["patient_id"]) in test_patients]})
    return plan


def summarise_folds(fold_metrics: Sequence[dict]) -> tuple[dict, dict, dict]:
    """(mean, sample standard deviation (ddof 1; NaN for one value), values) over folds of every
    metric; non-finite fold values are left out of the mean and sd, as in ``evaluation_repeats``."""
    keys = list(fold_metrics[0]) if fold_metrics else []
    values = {k: [float(m[k]) for m in fold_metrics] for k in keys}
    mean, sd = {}, {}
    for k, vals in values.items():
        ok = [v for v in vals if math.isfinite(v)]
        mean[k] = float(np.mean(ok)) if ok else float("nan")
        sd[k] = float(np.std(ok, ddof=1)) if len(ok) > 1 else float("nan")
    return mean, sd, values
