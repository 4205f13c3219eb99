"""Plain runners of the 3D evaluations: ``run_finetune_3d`` and ``run_classify_3d``.

Each resolves ``params.out``, builds the config (``preset`` default | tiny, then ``overrides``,
then every explicit parameter that is not None), loads the ``labelled_volumes`` dataset and the
encoder (tasks/evaluation/model_choice.py) and records the rows (tasks/evaluation/volume_eval.py).
Returns what the flow returns (fraction keys as str) plus ``markdown``, the flow's summary.
"""
from __future__ import annotations

from collections.abc import Callable

from mrifoundry import settings
from mrifoundry.params import Classify3dParams, Finetune3dParams
from mrifoundry.tasks.evaluation.model_choice import choice_of, volume_encoder_factory

__all__ = ["run_classify_3d", "run_finetune_3d"]


def _config(cls, preset: str, overrides: dict, **explicit):
    """``cls.tiny()`` or ``cls()`` with ``overrides``, then every explicit parameter that is not None."""
    if preset not in ("default", "tiny"):
        raise ValueError(f"preset must be 'default' or 'tiny', got {preset!r}")
    kw = {**overrides, **{k: v for k, v in explicit.items() if v is not None}}
    if isinstance(kw.get("labels"), list):
        kw["labels"] = tuple(kw["labels"])
    return cls.tiny(**kw) if preset == "tiny" else cls(**kw)


def _data_and_model(research, params):
    """The dataset's rows and the encoder factory with the data's input channels."""
    from mrifoundry.tasks.evaluation.volume_eval import data_channels
    from mrifoundry.tasks.ingest.labelled3d import load_labelled_volumes
    rows = load_labelled_volumes(research, params.dataset_id)
    return rows, volume_encoder_factory(research, choice_of(params), in_channels=data_channels(rows))


def _fractions(params) -> list[float] | None:
    return list(params.label_fractions) if params.label_fractions else None


def run_finetune_3d(params: Finetune3dParams, *, progress: Callable[[str], None] | None = None) -> dict:
    """Fine-tune a volume encoder + decoder (eval_id default ``finetune3d-<run or model>-<dataset>``);
    nested regions (BraTS WT ⊇ TC ⊇ ET) are scored as regions unless ``overrides`` say otherwise."""
    from mrifoundry.tasks.evaluation.finetune3d import Finetune3dConfig
    from mrifoundry.tasks.evaluation.volume_eval import finetune3d_eval, nested_regions
    say = progress or (lambda line: None)
    research = settings.research_dir(params.out)
    name = params.eval_id or f"finetune3d-{params.pretrained or params.model}-{params.dataset_id}"
    overrides = {"regions": nested_regions(research, params.dataset_id), **(params.overrides or {})}
    cfg = _config(Finetune3dConfig, params.preset, overrides, decoder=params.decoder, iterations=params.iterations,
                  roi=params.roi, freeze=params.freeze, lr=params.lr, encoder_lr=params.encoder_lr, seed=params.seed,
                  folds=params.folds, val_every=params.val_every)
    rows, loaded = _data_and_model(research, params)
    res = finetune3d_eval(research, rows, eval_id=name, model_label=loaded.label, weights_sha=loaded.weights_sha,
                          dataset_id=params.dataset_id, cfg=cfg, model_factory=loaded.model,
                          fractions=_fractions(params))
    res = {**res, "fractions": {str(f): v for f, v in res["fractions"].items()}}
    k = next(iter(res["fractions"].values()))["n_folds"]
    lines = [f"Mean over labels; ± is the sample sd over {k} folds." if k else
             "Mean over labels; ± is the sd over test cases.", "",
             "| label fraction | DSC | NSD | HD95 (mm) | lesion F1 | test cases | best iteration |",
             "|---|---|---|---|---|---|---|"]
    for f, r in res["fractions"].items():
        m, s = r["metrics"], r["std"]
        cells = " | ".join(f"{m[f'{x}_mean']:.3f} ± {s[f'{x}_mean']:.3f}" for x in ("dice", "nsd", "hd95", "lesion_f1"))
        best = [r["best_iteration"]] if not isinstance(r["best_iteration"], list) else r["best_iteration"]
        best = ", ".join("last" if b is None else str(b) for b in best)   # k-fold: one per fold
        lines.append(f"| {f} | {cells} | {r['n_test_cases']} | {best} |")
        say(f"finetune-3d {name} @{f}: DSC {m['dice_mean']:.3f}, NSD {m['nsd_mean']:.3f}, HD95 {m['hd95_mean']:.2f} "
            f"mm, lesion F1 {m['lesion_f1_mean']:.3f} on {r['n_test_cases']} test cases"
            + (f", {k} folds" if k else ""))
    return {**res, "markdown": f"# 3D fine-tuning `{name}`\n\n" + "\n".join(lines)}


def run_classify_3d(params: Classify3dParams, *, progress: Callable[[str], None] | None = None) -> dict:
    """k-fold classification of whole volumes (eval_id default ``classify3d-<run or model>-<dataset>``)."""
    from mrifoundry.tasks.evaluation.classify3d import Classify3dConfig
    from mrifoundry.tasks.evaluation.volume_eval import classify3d_eval
    say = progress or (lambda line: None)
    research = settings.research_dir(params.out)
    name = params.eval_id or f"classify3d-{params.pretrained or params.model}-{params.dataset_id}"
    cfg = _config(Classify3dConfig, params.preset, dict(params.overrides or {}), mode=params.mode,
                  iterations=params.iterations, roi=params.roi, lr=params.lr, encoder_lr=params.encoder_lr,
                  seed=params.seed)
    rows, loaded = _data_and_model(research, params)
    res = classify3d_eval(research, rows, eval_id=name, model_label=loaded.label, weights_sha=loaded.weights_sha,
                          dataset_id=params.dataset_id, cfg=cfg, model_factory=loaded.model,
                          fractions=_fractions(params))
    res = {**res, "fractions": {str(f): v for f, v in res["fractions"].items()}}
    lines = ["| label fraction | AUROC | accuracy | balanced accuracy |", "|---|---|---|---|"]
    for f, s in res["fractions"].items():
        lines.append(f"| {f} | " + " | ".join(f"{s[m]['mean']:.3f} ± {s[m]['std']:.3f}"
                                             for m in ("auroc", "accuracy", "balanced_accuracy")) + " |")
        say(f"classify-3d {name} @{f}: AUROC {s['auroc']['mean']:.3f} ± {s['auroc']['std']:.3f}")
    return {**res, "markdown": f"# 3D classification `{name}`\n\n" + "\n".join(lines)}
