"""Evaluations of a zoo model on catalog data, recorded in the ``evaluations`` table.

- ``linear_probe_eval``: pooled features of a frozen encoder, a linear classifier
  (tasks/evaluation/probing.py) on a label-balanced patient-level 60:40 split; labels from a catalog column.
- ``zero_shot_eval``: k-means over patch features of a labelled dataset's slices
  (tasks/evaluation/zero_shot.py), DSC per k, overlay pictures.

Outputs go to ``OUT/research/evaluations/<eval_id>/``; pictures are linked from the rows.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import torch

from mrifoundry import code_version
from mrifoundry.catalog.store import derived_lock
from mrifoundry.catalog.views import build_research_db, connect, query_dicts
from mrifoundry.params import ModelChoice
from mrifoundry.tasks.data.slices import query_slices
from mrifoundry.tasks.evaluation.embedding import embed_pooled, load_batch, load_features
from mrifoundry.tasks.evaluation.fewshot import METRICS, run_fewshot
from mrifoundry.tasks.evaluation.frd import frd, labelled_images, pretraining_images, sample_images
from mrifoundry.tasks.evaluation.model_choice import fewshot_factory
from mrifoundry.tasks.ingest.labelled2d import load_labelled
from mrifoundry.tasks.evaluation.probing import patient_split, plot_confusion, train_linear_probe
from mrifoundry.tasks.evaluation.repeats import repeat_rows, summarise, write_with_repeats
from mrifoundry.tasks.evaluation.transfer import transfer_analysis
from mrifoundry.tasks.evaluation.volume_embed import embed_volumes
from mrifoundry.tasks.evaluation.zero_shot import kmeans_segment, overlay_png, upsample_nearest, zero_shot_dice


def eval_dir(research: Path, eval_id: str) -> Path:
    if not eval_id.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"evaluation name {eval_id!r}: letters, digits, - and _ only")
    return research / "evaluations" / eval_id


def record(research: Path, rows: list[dict], repeats: dict[str, list[float]] | None = None, *,
           seeds: list[int] | None = None, repeat_n: list[int] | None = None) -> dict[str, dict]:
    """Upsert evaluation rows (same eval_id + metric replaces) and refresh the views; returns the
    rows written by metric.

    ``repeats``: metric → its value in each repeat (repeat r ran with ``seeds[r]``, default r,
    over ``repeat_n[r]`` items), written to ``evaluation_repeats``; that metric's row then gets
    value = mean and std = sample std (ddof 1) of the finite repeat values
    (tasks/evaluation/repeats.py). A row rewritten without repeats drops its old repeat rows."""
    now, version = dt.datetime.now(dt.timezone.utc), code_version()
    repeats = repeats or {}
    if set(repeats) - {r["metric"] for r in rows}:
        raise ValueError(f"repeat values of metrics without a row: {sorted(set(repeats) - {r['metric'] for r in rows})}")
    rows = [{"std": None, "n": None, "details": None, "picture_path": None, **r,
             **(summarise(repeats[r["metric"]]) if r["metric"] in repeats else {}),
             "created_at": now, "code_version": version} for r in rows]
    reps = [x for r in rows if r["metric"] in repeats
            for x in repeat_rows(r["eval_id"], r["metric"], repeats[r["metric"]], seeds, repeat_n)]
    with derived_lock(research):
        write_with_repeats(research, rows, reps)
        build_research_db(research)
    return {r["metric"]: r for r in rows}


#: An example probing query per input kind (the flow's default is the slice one).
PROBE_QUERIES = {
    "slices": "SELECT slice_id, patient_id, body_part AS label FROM training_slices",
    "volumes": "SELECT s.nifti_file, e.patient_id, s.sequence_type AS label FROM series s JOIN exams e "
               "USING (exam_id) WHERE s.nifti_file IS NOT NULL",
}


def linear_probe_eval(research: Path, model, *, eval_id: str, model_label: str, weights_sha: str, query: str,
                      epochs: int = 100, seed: int = 0, batch_size: int = 32, feature_set: str | None = None,
                      repeats: int = 1) -> dict:
    """Probe ``model`` on the images of ``query``, which returns ``patient_id``, ``label`` and
    the images: slices by ``slice_id`` or ``png_file`` (slice models), volumes by
    ``nifti_file`` (volume models, family ``volume``; one vector per volume,
    tasks/evaluation/volume_embed.py) — examples in ``PROBE_QUERIES``.

    ``feature_set``: read the slices' stored vectors from that feature set (its model must be
    ``model``) instead of embedding them again.

    ``repeats``: repeated 60:40 splits (MRI-CORE repeats its splits); repeat r draws the split
    and the probe's init with ``seed + r`` on the same embeddings. The rows hold mean and sample
    std, ``evaluation_repeats`` each split's value; the picture is the first split's.

    Raises:
        ValueError: the query lacks a column, or fewer than two classes or patients, or a
            slice is missing from ``feature_set``.
    """
    volumes = getattr(model, "family", None) == "volume"
    unit = "volumes" if volumes else "slices"
    cols, _ = query_dicts(research, f"SELECT * FROM ({query}) LIMIT 0")
    missing = {"patient_id", "label", *(["nifti_file"] if volumes else [])} - set(cols)
    if missing:
        raise ValueError(f"the probing query of a {unit[:-1]} model must return {sorted(missing)} "
                         f"(example: {PROBE_QUERIES[unit]})")
    data = query_dicts(research, query)[1] if volumes else query_slices(research, query)
    labels = [str(r["label"]) for r in data]
    if len(set(labels)) < 2:
        raise ValueError("linear probing needs at least two classes")
    if volumes:
        X = embed_volumes(model, [r["nifti_file"] for r in data], batch_size=min(batch_size, 2))
    elif feature_set:
        X = _stored_vectors(research, feature_set, [r["slice_id"] for r in data])
    else:
        X = embed_pooled(model, [r["png_file"] for r in data], batch_size)
    y, seeds, runs = np.array(labels), [seed + r for r in range(repeats)], []
    for s in seeds:
        tr, te = patient_split([r["patient_id"] for r in data], train_fraction=0.6, seed=s, labels=labels)
        runs.append((tr, te, train_linear_probe(X[tr], y[tr], X[te], y[te], epochs=epochs, seed=s)))
    tr, te, res = runs[0]   # the first split's confusion matrix is the picture
    out = eval_dir(research, eval_id)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_confusion(res, out / "confusion.png", f"{model_label}: linear probe ({len(te)} test {unit})")
    details = json.dumps({"query": query, "unit": unit, "feature_set": feature_set, "epochs": epochs, "seed": seed, "classes": res.class_names,
                          "confusion": res.confusion.tolist(), "n_train": len(tr), "n_test": len(te),
                          "best_epoch_accuracy": res.best_accuracy, "repeats": repeats, "seeds": seeds})
    base = {"eval_id": eval_id, "kind": "linear-probe", "model": model_label, "weights_sha256": weights_sha,
            "dataset": query, "n": len(te), "details": details, "picture_path": str(png.relative_to(research))}
    got = record(research, [{**base, "metric": m} for m in ("accuracy", "balanced_accuracy")],
                 repeats={"accuracy": [x.accuracy for *_, x in runs],
                          "balanced_accuracy": [x.balanced_accuracy for *_, x in runs]},
                 seeds=seeds, repeat_n=[len(t) for _, t, _ in runs])
    return {"accuracy": got["accuracy"]["value"], "balanced_accuracy": got["balanced_accuracy"]["value"],
            "accuracy_std": got["accuracy"]["std"], "balanced_accuracy_std": got["balanced_accuracy"]["std"],
            "repeats": repeats, "n_test": len(te), "unit": unit, "classes": res.class_names,
            "confusion_png": str(png)}


def _stored_vectors(research: Path, feature_set: str, slice_ids: list[str]) -> np.ndarray:
    ids, X = load_features(research, feature_set)
    at = {sid: i for i, sid in enumerate(ids)}
    missing = [s for s in slice_ids if s not in at]
    if missing:
        raise ValueError(f"{len(missing)} of {len(slice_ids)} probed slices are not in feature set {feature_set!r}")
    return X[[at[s] for s in slice_ids]]


@torch.no_grad()
def zero_shot_eval(research: Path, model, *, eval_id: str, model_label: str, weights_sha: str, dataset_id: str,
                   split: str = "test", k_values=(4, 8, 16, 32, 64, 128), seed: int = 0, n_overlays: int = 3,
                   batch_size: int = 16, foreground_only: bool = True, repeats: int = 1) -> dict:
    """k-means zero-shot segmentation of a labelled dataset's ``split`` (foreground = label > 0).

    ``repeats``: k-means runs with seeds ``seed + r`` on the same features; rows hold the mean
    and sample std per k, ``evaluation_repeats`` each run's DSC; overlays use ``seed``.

    MRI-CORE evaluates slices with foreground only (its loaders drop empty masks); set
    ``foreground_only=False`` to include the empty ones.
    """
    from PIL import Image
    if getattr(model, "family", None) == "volume":
        raise ValueError(f"{model.name!r} is a volume encoder; zero-shot segmentation clusters 2D slice features")
    rows = load_labelled(research, dataset_id, split)
    if foreground_only:
        rows = [r for r in rows if r["has_foreground"]]
    if not rows:
        raise ValueError(f"dataset {dataset_id!r} has no {split} slices to segment")
    feats, masks, images = [], [], []
    for i in range(0, len(rows), batch_size):
        chunk = rows[i:i + batch_size]
        x = load_batch([r["image_file"] for r in chunk], model.image_size)
        feats.append(model.embed(x).float().cpu().numpy())
        for r in chunk:
            m = np.asarray(Image.open(r["mask_file"])) > 0
            # masks at the model's input size: the same geometry as the features
            masks.append(np.asarray(Image.fromarray(m.astype(np.uint8)).resize(
                (model.image_size, model.image_size), Image.NEAREST)) > 0)
        images.append(x[:, 0].numpy())
    F, M, imgs = np.concatenate(feats), np.stack(masks), np.concatenate(images)
    seeds = [seed + r for r in range(repeats)]
    per_seed = [zero_shot_dice(F, M, k_values=k_values, seed=s) for s in seeds]
    scores = {k: float(np.mean([d[k] for d in per_seed])) for k in per_seed[0]}
    out = eval_dir(research, eval_id)
    out.mkdir(parents=True, exist_ok=True)
    best_k = max(scores, key=scores.get) if scores else None
    pictures = []
    if best_k is not None:
        labels = upsample_nearest(kmeans_segment(F, best_k, seed=seed), M.shape[-2:])
        for j in np.linspace(0, len(F) - 1, min(n_overlays, len(F))).astype(int):
            pictures.append(overlay_png(imgs[j], labels[j], out / f"overlay_k{best_k}_{j:03d}.png"))
    base = {"eval_id": eval_id, "kind": "zero-shot", "model": model_label, "weights_sha256": weights_sha,
            "dataset": f"{dataset_id}:{split}", "n": len(F)}
    rows_out = [{**base, "metric": f"dice_k{k}", "value": v,
                 "details": json.dumps({"k": k, "seed": seed, "seeds": seeds, "foreground_only": foreground_only}),
                 "picture_path": str(pictures[0].relative_to(research)) if (pictures and k == best_k) else None}
                for k, v in scores.items()]
    got = record(research, rows_out, repeats={f"dice_k{k}": [d[k] for d in per_seed] for k in scores},
                 seeds=seeds, repeat_n=[len(F)] * repeats)
    return {"dice_per_k": scores, "dice_std_per_k": {k: got[f"dice_k{k}"]["std"] for k in scores}, "best_k": best_k,
            "repeats": repeats, "n_slices": len(F), "overlays": [str(p) for p in pictures]}


def non_blank(paths: list[str]) -> list[str]:
    """Drop constant images: pyradiomics (and frd-score) fail on them."""
    from PIL import Image
    keep = []
    for p in paths:
        with Image.open(p) as im:
            lo, hi = im.convert("L").getextrema()
        if hi > lo:
            keep.append(p)
    return keep


def frd_eval(research: Path, *, eval_id: str, reference_sql: str, dataset_ids: list[str], n: int, seed: int = 0,
             workers: int = 2) -> dict:
    """FRD of each labelled dataset against the pretraining slices of ``reference_sql``,
    the same ``n`` images per side (seeded); per-image features cached under
    ``research/frd_cache``. One ``evaluations`` row per dataset (metric ``frd``)."""
    reference = sample_images(non_blank(pretraining_images(research, reference_sql)), n, seed)
    out, rows = {}, []
    for ds in dataset_ids:
        other = sample_images(non_blank(labelled_images(research, ds)), n, seed)
        r = frd(reference, other, cache_dir=research / "frd_cache", workers=workers)
        out[ds] = r
        rows.append({"eval_id": eval_id, "kind": "frd", "model": "frd-score v1", "weights_sha256": "n/a",
                     "dataset": ds, "metric": f"frd:{ds}", "value": float(r["frd"]), "n": n,
                     "details": json.dumps({"reference_sql": reference_sql, "seed": seed, "n": n,
                                            "n_features": r["n_features"], "cache_hits": r["cache_hits"],
                                            "cache_misses": r["cache_misses"], "seconds": r["seconds"]})})
    record(research, rows)
    return out


def fewshot_eval(research: Path, *, eval_id: str, dataset_id: str, cfg, choice: ModelChoice,
                 sam_checkpoint: str | None = None, random_decoder: bool = False) -> dict:
    """MRI-CORE's few-shot protocol on a labelled dataset with the model of ``choice``
    (tasks/evaluation/model_choice.py), fine-tuned as ``cfg.mode`` says, the decoder from
    ``sam_checkpoint`` (or random, only with ``random_decoder``); mean ± std over
    ``cfg.repeats`` rows in ``evaluations`` (test 2D/3D DSC and 3D NSD, foreground-only and all
    slices) and a training-curve PNG. ``details`` records the config, per-repeat values, the
    mode and the decoder's source, digest and the keys that stayed random."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loaded = fewshot_factory(research, choice, image_size=cfg.image_size,
                             encoder_adapter_depths=cfg.encoder_adapter_depths, seed=cfg.seed, mode=cfg.mode,
                             lora_rank=cfg.lora_rank, sam_checkpoint=sam_checkpoint, random_decoder=random_decoder)
    label, sha, factory = loaded.label, loaded.weights_sha, loaded.model
    rows = load_labelled(research, dataset_id)
    res = run_fewshot(factory, rows, cfg)
    out = eval_dir(research, eval_id)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
    for r, rep in enumerate(res["repeats"]):
        ax[0].plot(rep["curves"]["train_loss"], lw=1, label=f"repeat {r}")
        val = rep["curves"].get("val_dsc_3d") or []
        if val:
            ax[1].plot([v[0] for v in val], [v[1] for v in val], marker="o", lw=1, label=f"repeat {r}")
    ax[0].set_title("training loss (DiceCE, per epoch)")
    ax[1].set_title("validation 3D DSC")
    ax[0].set_xlabel("epoch")
    ax[1].set_xlabel("epoch")
    ax[0].legend(fontsize=7)
    fig.suptitle(f"{label} few-shot ({cfg.mode}) on {dataset_id}", fontsize=10)
    fig.tight_layout()
    png = out / "curves.png"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    details = json.dumps({"config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()},
                          "per_repeat": {m: res["summary"][m]["values"] for m in METRICS},
                          **loaded.provenance})
    base = {"eval_id": eval_id, "kind": "few-shot", "model": label, "weights_sha256": sha, "dataset": dataset_id,
            "n": cfg.repeats, "details": details, "picture_path": str(png.relative_to(research))}
    record(research, [{**base, "metric": m} for m in METRICS],   # value, std: mean, sample std of the repeats
           repeats={m: res["summary"][m]["values"] for m in METRICS},
           seeds=[cfg.seed + r for r in range(cfg.repeats)])
    return {"summary": {m: {k: v for k, v in s.items() if k != "values"} for m, s in res["summary"].items()},
            "curves_png": str(png), **loaded.provenance}


def transfer_eval(research: Path, *, eval_id: str, model_a: str, model_b: str, frd_eval_id: str = "frd",
                  metric: str = "test_dsc_3d") -> dict:
    """MRI-CORE figure 4: per dataset, the few-shot gain of ``model_a`` over ``model_b``
    (``metric``) against the dataset's FRD to the pretraining set; Pearson and Spearman."""
    con = connect(research)
    try:
        fs = con.execute("SELECT model, dataset, value FROM evaluations WHERE kind = 'few-shot' AND metric = ? "
                         "AND model IN (?, ?)", [metric, model_a, model_b]).fetchall()
        frd_rows = con.execute("SELECT dataset, value FROM evaluations WHERE kind = 'frd' AND eval_id = ?",
                               [frd_eval_id]).fetchall()
    finally:
        con.close()
    score = {(m, d): v for m, d, v in fs}
    frd_by = dict(frd_rows)
    rows = [{"dataset": d, "gain": score[(model_a, d)] - score[(model_b, d)], "frd": frd_by[d]}
            for d in sorted(frd_by) if (model_a, d) in score and (model_b, d) in score]
    out = eval_dir(research, eval_id)
    out.mkdir(parents=True, exist_ok=True)
    res = transfer_analysis(rows, out / "gain_vs_frd.png", x_label="FRD to the pretraining set",
                            y_label=f"{metric} gain: {model_a} − {model_b}")
    base = {"eval_id": eval_id, "kind": "transfer", "model": f"{model_a} vs {model_b}", "weights_sha256": "n/a",
            "dataset": ",".join(r["dataset"] for r in rows), "n": res["n"],
            "details": json.dumps({"rows": rows, "metric": metric}), "picture_path": str(Path(res["png"]).relative_to(research))}
    record(research, [{**base, "metric": "pearson_r", "value": res["pearson"]["r"]},
                      {**base, "metric": "pearson_p", "value": res["pearson"]["p"]},
                      {**base, "metric": "spearman_r", "value": res["spearman"]["r"]},
                      {**base, "metric": "spearman_p", "value": res["spearman"]["p"]}])
    return res
