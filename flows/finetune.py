"""3D downstream flows: ``finetune-3d`` (segmentation) and ``classify-3d`` (k-fold classification).

Wiring only (tasks/evaluation/finetune3d.py, classify3d.py, finetune3d_eval.py). A model is a
volume zoo entry (triad-unet, triad-swin, brainsegfounder, prism) with local weights, a random
init of it (no weights), or a ``pretrain`` run of the catalog (``pretrained=<model_id>``). The
dataset is a ``labelled_volumes`` dataset of the catalog (flow ``ingest-downstream``). Results
land in the ``evaluations`` table (kinds ``finetune-3d`` / ``classify-3d``); pictures are linked
as artifacts.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from mrifoundry.flows.params import expand_home, research_dir

__all__ = ["classify_3d", "finetune_3d"]


def _config(cls, preset: str, overrides: dict, **explicit):
    """``cls.tiny()`` or ``cls()`` with ``overrides``, then every explicit parameter that is not None."""
    if preset not in ("default", "tiny"):
        raise ValueError(f"preset must be 'default' or 'tiny', got {preset!r}")
    kw = {**overrides, **{k: v for k, v in explicit.items() if v is not None}}
    if isinstance(kw.get("labels"), list):
        kw["labels"] = tuple(kw["labels"])
    return cls.tiny(**kw) if preset == "tiny" else cls(**kw)


def _model(research: Path, rows: list[dict], model: str, weights: str | None, arch: str | None,
           pretrained: str | None):
    from mrifoundry.tasks.evaluation.finetune3d_eval import data_channels, volume_encoder_factory
    return volume_encoder_factory(research, model=model, weights=expand_home(weights), arch=arch,
                                  pretrained=pretrained, in_channels=data_channels(rows))


@task(name="finetune-3d")
def finetune3d_task(research: str, eval_id: str, dataset_id: str, model: str, weights: str | None, arch: str | None,
                    pretrained: str | None, cfg_kw: dict, fractions: list[float] | None) -> dict:
    from mrifoundry.tasks.evaluation.downstream import load_labelled_volumes
    from mrifoundry.tasks.evaluation.finetune3d import Finetune3dConfig
    from mrifoundry.tasks.evaluation.finetune3d_eval import finetune3d_eval, nested_regions
    # nested regions (BraTS WT ⊇ TC ⊇ ET) are scored as regions unless the caller says otherwise
    cfg_kw = {**cfg_kw, "overrides": {"regions": nested_regions(Path(research), dataset_id), **cfg_kw["overrides"]}}
    cfg = _config(Finetune3dConfig, **cfg_kw)
    rows = load_labelled_volumes(Path(research), dataset_id)
    label, sha, factory = _model(Path(research), rows, model, weights, arch, pretrained)
    res = finetune3d_eval(Path(research), rows, eval_id=eval_id, model_label=label, weights_sha=sha,
                          dataset_id=dataset_id, cfg=cfg, model_factory=factory, fractions=fractions)
    return {**res, "fractions": {str(f): v for f, v in res["fractions"].items()}}


@flow(name="finetune-3d", log_prints=False)
def finetune_3d(dataset_id: str, out: str | None = None, model: str = "brainsegfounder", weights: str | None = None,
                arch: str | None = None, pretrained: str | None = None, decoder: str | None = None,
                iterations: int | None = None, roi: int | None = None, freeze: bool | None = None,
                lr: float | None = None, encoder_lr: float | None = None, seed: int | None = None,
                label_fractions: list[float] | None = None, preset: str = "default", overrides: dict | None = None,
                eval_id: str | None = None) -> dict:
    """Fine-tune a volume encoder with a SwinUNETR or UNETR decoder (``decoder``) on a labelled
    3D dataset's train split, test on its test split by sliding windows: DSC and NSD per label.
    ``preset``: default | tiny (tasks.evaluation.finetune3d.Finetune3dConfig); ``overrides``:
    any other config field; ``label_fractions``: a sweep over shares of the training patients."""
    research = research_dir(out)
    name = eval_id or f"finetune3d-{pretrained or model}-{dataset_id}"
    cfg_kw = {"preset": preset, "overrides": dict(overrides or {}), "decoder": decoder, "iterations": iterations,
              "roi": roi, "freeze": freeze, "lr": lr, "encoder_lr": encoder_lr, "seed": seed}
    res = finetune3d_task(str(research), name, dataset_id, model, weights, arch, pretrained, cfg_kw,
                          list(label_fractions) if label_fractions else None)
    lines = ["| label fraction | DSC (mean over labels) | NSD | test cases |", "|---|---|---|---|"]
    for f, r in res["fractions"].items():
        m, s = r["metrics"], r["std"]
        lines.append(f"| {f} | {m['dice_mean']:.3f} ± {s['dice_mean']:.3f} | {m['nsd_mean']:.3f} ± "
                     f"{s['nsd_mean']:.3f} | {r['n_test_cases']} |")
        get_run_logger().info("finetune-3d %s @%s: DSC %.3f, NSD %.3f on %d test cases", name, f, m["dice_mean"],
                              m["nsd_mean"], r["n_test_cases"])
    if res["overlay_png"]:
        create_link_artifact(f"file://{res['overlay_png']}", link_text="prediction vs label (PNG)",
                             key="finetune-3d-overlay")
    create_markdown_artifact(f"# 3D fine-tuning `{name}`\n\n" + "\n".join(lines), key="finetune-3d-summary")
    return res


@task(name="classify-3d")
def classify3d_task(research: str, eval_id: str, dataset_id: str, model: str, weights: str | None, arch: str | None,
                    pretrained: str | None, cfg_kw: dict, fractions: list[float] | None) -> dict:
    from mrifoundry.tasks.evaluation.classify3d import Classify3dConfig
    from mrifoundry.tasks.evaluation.downstream import load_labelled_volumes
    from mrifoundry.tasks.evaluation.finetune3d_eval import classify3d_eval
    cfg = _config(Classify3dConfig, **cfg_kw)
    rows = load_labelled_volumes(Path(research), dataset_id)
    label, sha, factory = _model(Path(research), rows, model, weights, arch, pretrained)
    res = classify3d_eval(Path(research), rows, eval_id=eval_id, model_label=label, weights_sha=sha,
                          dataset_id=dataset_id, cfg=cfg, model_factory=factory, fractions=fractions)
    return {**res, "fractions": {str(f): v for f, v in res["fractions"].items()}}


@flow(name="classify-3d", log_prints=False)
def classify_3d(dataset_id: str, out: str | None = None, model: str = "brainsegfounder", weights: str | None = None,
                arch: str | None = None, pretrained: str | None = None, mode: str | None = None,
                iterations: int | None = None, roi: int | None = None, lr: float | None = None,
                encoder_lr: float | None = None, seed: int | None = None, label_fractions: list[float] | None = None,
                preset: str = "default", overrides: dict | None = None, eval_id: str | None = None) -> dict:
    """Classify whole volumes of a labelled 3D dataset (``mode``: finetune | linear), k-fold over its
    ``fold`` column: AUROC, accuracy, balanced accuracy as mean ± std over folds."""
    research = research_dir(out)
    name = eval_id or f"classify3d-{pretrained or model}-{dataset_id}"
    cfg_kw = {"preset": preset, "overrides": dict(overrides or {}), "mode": mode, "iterations": iterations,
              "roi": roi, "lr": lr, "encoder_lr": encoder_lr, "seed": seed}
    res = classify3d_task(str(research), name, dataset_id, model, weights, arch, pretrained, cfg_kw,
                          list(label_fractions) if label_fractions else None)
    lines = ["| label fraction | AUROC | accuracy | balanced accuracy |", "|---|---|---|---|"]
    for f, s in res["fractions"].items():
        lines.append(f"| {f} | " + " | ".join(f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}"
                                             for m in ("auroc", "accuracy", "balanced_accuracy")) + " |")
        get_run_logger().info("classify-3d %s @%s: AUROC %.3f ± %.3f", name, f, s["auroc"]["mean"], s["auroc"]["std"])
    create_link_artifact(f"file://{res['roc_png']}", link_text="ROC curves per fold (PNG)", key="classify-3d-roc")
    create_markdown_artifact(f"# 3D classification `{name}`\n\n" + "\n".join(lines), key="classify-3d-summary")
    return res
