"""Volume evaluations: 3D fine-tuning and 3D classification recorded in ``evaluations``, with a picture.

- :func:`finetune3d_eval` (kind ``finetune-3d``): tasks/evaluation/finetune3d.py on a labelled
  3D dataset; metrics ``dice_<v>``, ``nsd_<v>``, ``hd95_<v>`` (mm), ``lesion_f1_<v>`` per label
  value and their ``_mean`` over labels (mean over test cases, ``std`` the population std over
  cases; k-fold: mean and sample sd over folds, each fold's value in ``evaluation_repeats``
  (repeat = fold index, seed = seed + fold, n = the fold's test cases) and ``details.folds``;
  ``n`` the test cases); an overlay PNG of label vs prediction on the middle axial slice through the label
  of the first test case.
- :func:`classify3d_eval` (kind ``classify-3d``): tasks/evaluation/classify3d.py k-fold
  cross-validation; metrics ``auroc``, ``accuracy``, ``balanced_accuracy`` (mean over folds,
  ``std`` over folds, ``n`` the cases); a PNG of every fold's ROC curve.

With a label-fraction sweep, a fraction f < 1 adds ``@f<f>`` to the metric names
(``dice_mean@f0.25``), so the rows of one eval_id stay unique. Outputs go to
``eval_dir(research, eval_id)``: the pictures, ``predictions/`` (NIfTI) and ``result.json``. The
encoders come from tasks/evaluation/model_choice.py (``volume_encoder_factory``).
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from mrifoundry.atomic import write_text
from mrifoundry.tasks.evaluation import classify3d, finetune3d
from mrifoundry.tasks.evaluation.evaluate import eval_dir, record

__all__ = ["classify3d_eval", "data_channels", "finetune3d_eval", "metric_name", "nested_regions", "overlay_png",
           "roc_png"]


def data_channels(rows: Sequence[dict]) -> int:
    """The one ``n_channels`` of every row; raises ValueError when they differ or are missing."""
    chans = {r.get("n_channels") for r in rows}
    if len(chans) != 1 or None in chans:
        raise ValueError(f"rows must share one n_channels, got {sorted(map(str, chans))}")
    return int(chans.pop())


def nested_regions(research: Path, dataset_id: str) -> bool:
    """Whether the dataset's label values are nested regions (``datasets.nested_regions``)."""
    from mrifoundry.catalog.views import connect
    con = connect(Path(research))
    try:
        row = con.execute("SELECT nested_regions FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone()
    finally:
        con.close()
    return bool(row and row[0])


def metric_name(metric: str, fraction: float) -> str:
    """``dice_mean`` at fraction 1, ``dice_mean@f0.25`` below."""
    return metric if fraction >= 1.0 else f"{metric}@f{fraction:g}"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _write_json(path: Path, obj) -> Path:
    write_text(path, json.dumps(obj, indent=1, default=str))
    return path


def overlay_png(image: np.ndarray, label: np.ndarray, pred: np.ndarray, path: Path, title: str) -> Path:
    """Two panels of one axial slice (the label's middle z, else the volume's): label, prediction
    (contours per value over the image's first channel). ``image`` [C, X, Y, Z]; maps [X, Y, Z]."""
    plt = _plt()
    zs = np.nonzero(label.any(axis=(0, 1)))[0]
    z = int(zs[len(zs) // 2]) if len(zs) else label.shape[2] // 2
    fig, ax = plt.subplots(1, 2, figsize=(8, 4))
    for a, m, name in zip(ax, (label, pred), ("label", "prediction")):
        a.imshow(image[0, :, :, z].T, cmap="gray", origin="lower")
        values = [v for v in np.unique(np.concatenate([label[:, :, z].ravel(), pred[:, :, z].ravel()])) if v]
        for i, v in enumerate(values):
            if (m[:, :, z] == v).any():
                a.contour((m[:, :, z] == v).T.astype(float), levels=[0.5], colors=[f"C{i}"], linewidths=1)
        a.set_title(f"{name} (z={z})")
        a.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(plt, fig, path)


def roc_png(folds: Sequence[dict], path: Path, title: str) -> Path:
    """Every fold's ROC curve (binary; micro one-vs-rest for multi-class) with its AUROC."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    for f in folds:
        if f["roc"] is not None:
            ax.plot(f["roc"][0], f["roc"][1], lw=1, label=f"fold {f['fold']}: AUROC {f['auroc']:.3f}")
    ax.plot([0, 1], [0, 1], "k--", lw=0.5)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title(title, fontsize=9)
    return _save(plt, fig, path)


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _config(cfg) -> dict:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}


def finetune3d_eval(research: Path, rows: Sequence[dict], *, eval_id: str, model_label: str, weights_sha: str,
                    dataset_id: str, cfg: finetune3d.Finetune3dConfig, model_factory: Callable[[], object],
                    fractions: Sequence[float] | None = None) -> dict:
    """Fine-tune ``model_factory``'s encoder on ``rows`` (tasks.evaluation.finetune3d.run_finetune3d)
    at ``cfg.label_fraction``, or at each of ``fractions``; record the rows and the overlay.

    Returns ``{"fractions": {f: {"metrics", "std", "n_test_cases", "train_patients", "best_iteration",
    "n_folds"}}, "overlay_png", "result_json"}`` (``n_folds`` 0 for the train/test split).
    """
    out = eval_dir(research, eval_id)
    out.mkdir(parents=True, exist_ok=True)
    fracs = [float(f) for f in (fractions or [cfg.label_fraction])]
    results = finetune3d.label_fraction_sweep(model_factory, rows, cfg, fracs, out_dir=out / "predictions")
    top = results[max(fracs)]
    png = None
    if top["predictions"]:
        case_id, pred_file = next(iter(top["predictions"].items()))
        case = finetune3d.load_case(next(r for r in rows if str(r["case_id"]) == case_id))
        pred = np.asarray(nib.load(pred_file).dataobj)
        png = overlay_png(case["image"], case["label"], pred, out / "overlay.png",
                          f"{model_label} + {cfg.decoder} on {dataset_id}: {case_id} "
                          f"(DSC {top['per_case'][case_id]['dice_mean']:.3f})")
    _write_json(out / "result.json", {str(f): r for f, r in results.items()})
    rows_out, repeats, seeds, fold_n = [], {}, None, None   # the folds (so seeds, n) are the same at every fraction
    for f, r in results.items():
        details = json.dumps({"config": _config(cfg), "label_fraction": f, "labels": r["labels"],
                              "per_case": r["per_case"], "train_patients": r["train_patients"],
                              "val_patients": r["val_patients"], "n_train_cases": r["n_train_cases"],
                              "n_val_cases": r["n_val_cases"], "best_iteration": r["best_iteration"],
                              **_curves(r), "trainable_params": r["trainable_params"], "seconds": r["seconds"]})
        base = {"eval_id": eval_id, "kind": "finetune-3d", "model": model_label, "weights_sha256": weights_sha,
                "dataset": dataset_id, "n": r["n_test_cases"], "details": details,
                "picture_path": str(png.relative_to(research)) if png is not None and f == max(fracs) else None}
        rows_out += [{**base, "metric": metric_name(m, f), "value": v, "std": r["std"][m]}
                     for m, v in r["metrics"].items()]
        if r["folds"]:   # k-fold: one evaluation_repeats row per fold (repeat = fold index, seed = seed + fold)
            repeats.update({metric_name(m, f): vals for m, vals in r["fold_values"].items()})
            seeds, fold_n = [fold["seed"] for fold in r["folds"]], [fold["n_test_cases"] for fold in r["folds"]]
    record(research, rows_out, repeats or None, seeds=seeds, repeat_n=fold_n)
    return {"fractions": {f: {**{k: r[k] for k in ("metrics", "std", "n_test_cases", "train_patients",
                                                   "best_iteration")}, "n_folds": len(r["folds"] or [])}
                          for f, r in results.items()},
            "overlay_png": str(png) if png else None, "result_json": str(out / "result.json")}


def _curves(r: dict) -> dict:
    """The loss and validation curves for ``details``: the run's, or per fold with the fold's values."""
    if not r["folds"]:
        return {"loss_curve": r["curve"]["loss"], "val_curve": r["curve"].get("val")}
    return {"fold_values": r["fold_values"],
            "folds": [{**{k: v for k, v in fold.items() if k != "curve"}, "loss_curve": fold["curve"]["loss"],
                       "val_curve": fold["curve"].get("val")} for fold in r["folds"]]}


def classify3d_eval(research: Path, rows: Sequence[dict], *, eval_id: str, model_label: str, weights_sha: str,
                    dataset_id: str, cfg: classify3d.Classify3dConfig, model_factory: Callable[[], object],
                    fractions: Sequence[float] | None = None) -> dict:
    """k-fold classification (tasks.evaluation.classify3d.cross_validate) at ``cfg.label_fraction``
    or each of ``fractions``; record mean ± std over folds and the ROC picture.

    Returns ``{"fractions": {f: summary without values}, "roc_png", "result_json"}``.
    """
    out = eval_dir(research, eval_id)
    out.mkdir(parents=True, exist_ok=True)
    fracs = [float(f) for f in (fractions or [cfg.label_fraction])]
    results = classify3d.label_fraction_sweep(model_factory, rows, cfg, fracs)
    top = results[max(fracs)]
    png = roc_png(top["folds"], out / "roc.png",
                  f"{model_label} ({cfg.mode}) on {dataset_id}: {len(top['folds'])}-fold, "
                  f"AUROC {top['summary']['auroc']['mean']:.3f} ± {top['summary']['auroc']['std']:.3f}")
    _write_json(out / "result.json", {str(f): r for f, r in results.items()})
    rows_out, repeats = [], {}
    for f, r in results.items():
        details = json.dumps({"config": _config(cfg), "label_fraction": f, "classes": r["classes"],
                              "per_fold": [{k: v for k, v in fold.items() if k not in ("roc", "curve", "probs")}
                                           for fold in r["folds"]],
                              "values": {m: r["summary"][m]["values"] for m in classify3d.METRICS}})
        base = {"eval_id": eval_id, "kind": "classify-3d", "model": model_label, "weights_sha256": weights_sha,
                "dataset": dataset_id, "n": r["n_cases"], "details": details,
                "picture_path": str(png.relative_to(research)) if f == max(fracs) else None}
        rows_out += [{**base, "metric": metric_name(m, f), "value": r["summary"][m]["mean"]}
                     for m in classify3d.METRICS]
        repeats.update({metric_name(m, f): r["summary"][m]["values"] for m in classify3d.METRICS})
    # one evaluation_repeats row per fold (repeat = fold, seed = seed + fold): mean ± sample sd over folds;
    # every label fraction tests the same folds
    record(research, rows_out, repeats, seeds=[cfg.seed + fold["fold"] for fold in top["folds"]],
           repeat_n=[fold["n_test"] for fold in top["folds"]])
    return {"fractions": {f: {m: {k: v for k, v in s.items() if k != "values"} for m, s in r["summary"].items()}
                          for f, r in results.items()},
            "roc_png": str(png), "result_json": str(out / "result.json")}
