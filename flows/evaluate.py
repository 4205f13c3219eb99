"""Evaluation flows: ``linear-probe`` and ``zero-shot`` (more in docs/evaluation.md).

Wiring only (tasks/evaluation/evaluate.py). A model is a zoo entry with local weights, or a
``pretrain`` run of the catalog (``pretrained=<model_id>``). Results land in the catalog's
``evaluations`` table; pictures are linked as artifacts.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from mrifoundry.flows.params import expand_home, research_dir
from mrifoundry.tasks.pretraining.pretrained import pretrained_run


def resolve_model(research: Path, model: str, weights: str | None, arch: str | None, image_size: int | None,
                  pretrained: str | None, seed: int = 0):
    """(ZooModel, label, weights sha) for the flow parameters."""
    import torch

    from mrifoundry.models import zoo
    from mrifoundry.tasks.evaluation.embedding import weights_digest
    if pretrained:
        run = pretrained_run(research, pretrained)
        model, weights, arch, label = run.entry, run.checkpoint, run.arch, pretrained
    else:
        weights, label = expand_home(weights), model
    device = "cuda" if torch.cuda.is_available() else "cpu"
    opts = {"seed": seed} if model == "random" else {}
    return zoo.load(model, weights, arch=arch, image_size=image_size, device=device, **opts), label, \
        weights_digest(weights)


@task(name="linear-probe")
def probe_task(research: str, eval_id: str, query: str | None, model: str, weights: str | None, arch: str | None,
               image_size: int | None, pretrained: str | None, epochs: int, seed: int) -> dict:
    from mrifoundry.tasks.evaluation.evaluate import PROBE_QUERIES, linear_probe_eval
    m, label, sha = resolve_model(Path(research), model, weights, arch, image_size, pretrained, seed)
    query = query or PROBE_QUERIES["volumes" if getattr(m, "family", None) == "volume" else "slices"]
    return linear_probe_eval(Path(research), m, eval_id=eval_id, model_label=label, weights_sha=sha, query=query,
                             epochs=epochs, seed=seed)


@task(name="zero-shot")
def zero_shot_task(research: str, eval_id: str, dataset_id: str, split: str, k_values: list[int], model: str,
                   weights: str | None, arch: str | None, image_size: int | None, pretrained: str | None,
                   seed: int) -> dict:
    from mrifoundry.tasks.evaluation.evaluate import zero_shot_eval
    m, label, sha = resolve_model(Path(research), model, weights, arch, image_size, pretrained, seed)
    res = zero_shot_eval(Path(research), m, eval_id=eval_id, model_label=label, weights_sha=sha,
                         dataset_id=dataset_id, split=split, k_values=tuple(k_values), seed=seed)
    return {**res, "dice_per_k": {str(k): v for k, v in res["dice_per_k"].items()}}


@flow(name="linear-probe", log_prints=False)
def linear_probe(out: str | None = None,
                 query: str | None = None,
                 model: str = "mri-core", weights: str | None = None, arch: str | None = None,
                 image_size: int | None = None, pretrained: str | None = None, eval_id: str | None = None,
                 epochs: int = 100, seed: int = 0) -> dict:
    """Linear probing: ``query`` returns patient_id, label and png_file (slice models) or
    nifti_file (volume models: triad-unet, triad-swin, brainsegfounder, prism or their
    pretrain runs); label-balanced patient-level 60:40 split. Default query: tasks.evaluation.evaluate.PROBE_QUERIES
    (body part of training slices; sequence type of converted volumes)."""
    research = research_dir(out)
    name = eval_id or f"probe-{pretrained or model}"
    res = probe_task(str(research), name, query, model, weights, arch, image_size, pretrained, epochs, seed)
    get_run_logger().info("linear probe %s: accuracy %.3f (balanced %.3f) on %d test %s", name, res["accuracy"],
                          res["balanced_accuracy"], res["n_test"], res["unit"])
    create_link_artifact(f"file://{res['confusion_png']}", link_text="confusion matrix (PNG)", key="probe-confusion")
    create_markdown_artifact(f"# Linear probe `{name}`\n\naccuracy **{res['accuracy']:.3f}**, balanced "
                             f"{res['balanced_accuracy']:.3f}, {res['n_test']} test {res['unit']}, classes "
                             f"{', '.join(res['classes'])}", key="probe-summary")
    return res


@flow(name="zero-shot", log_prints=False)
def zero_shot(dataset_id: str, out: str | None = None, split: str = "test",
              k_values: list[int] = (4, 8, 16, 32, 64, 128), model: str = "mri-core", weights: str | None = None,
              arch: str | None = None, image_size: int | None = None, pretrained: str | None = None,
              eval_id: str | None = None, seed: int = 0) -> dict:
    """Zero-shot segmentation of a labelled dataset by k-means over patch features."""
    research = research_dir(out)
    name = eval_id or f"zeroshot-{pretrained or model}-{dataset_id}"
    res = zero_shot_task(str(research), name, dataset_id, split, list(k_values), model, weights, arch, image_size,
                         pretrained, seed)
    get_run_logger().info("zero-shot %s: best k=%s, DSC per k %s", name, res["best_k"], res["dice_per_k"])
    for i, p in enumerate(res["overlays"]):
        create_link_artifact(f"file://{p}", link_text=f"k-means overlay {i + 1} (PNG)", key=f"zero-shot-overlay-{i + 1}")
    table = "\n".join(f"| {k} | {v:.3f} |" for k, v in res["dice_per_k"].items())
    create_markdown_artifact(f"# Zero-shot `{name}`\n\n| k | DSC |\n|---|---|\n{table}", key="zero-shot-summary")
    return res


@task(name="frd")
def frd_task(research: str, eval_id: str, reference_sql: str, dataset_ids: list[str], n: int, seed: int,
             workers: int) -> dict:
    from mrifoundry.tasks.evaluation.evaluate import frd_eval
    res = frd_eval(Path(research), eval_id=eval_id, reference_sql=reference_sql, dataset_ids=dataset_ids, n=n,
                   seed=seed, workers=workers)
    return {ds: {k: r[k] for k in ("frd", "n_reference", "n_other", "n_features", "cache_hits", "cache_misses")}
            for ds, r in res.items()}


@flow(name="frd", log_prints=False)
def frd_flow(dataset_ids: list[str], out: str | None = None,
             reference_sql: str = "SELECT png_file FROM training_slices", n: int = 200, seed: int = 0,
             workers: int = 2, eval_id: str = "frd") -> dict:
    """FRDv1 (frd-score) of labelled datasets against the pretraining slices (dataset 1),
    ``n`` images per side drawn with ``seed``; features cached, so a second FRD against the
    same reference recomputes nothing for it."""
    research = research_dir(out)
    res = frd_task(str(research), eval_id, reference_sql, list(dataset_ids), n, seed, workers)
    lines = ["| dataset | FRD | n | features | cache hits / misses |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {r['frd']:.3f} | {r['n_other']} | {r['n_features']} | {r['cache_hits']} / {r['cache_misses']} |"
              for d, r in res.items()]
    create_markdown_artifact("# FRD against the pretraining set\n\n" + "\n".join(lines), key="frd-summary")
    get_run_logger().info("FRD: %s", {d: round(r["frd"], 3) for d, r in res.items()})
    return res


@task(name="few-shot")
def fewshot_task(research: str, eval_id: str, dataset_id: str, preset: str, overrides: dict, model: str,
                 weights: str | None, arch: str | None, pretrained: str | None) -> dict:
    from mrifoundry.tasks.evaluation.evaluate import fewshot_eval
    from mrifoundry.tasks.evaluation.fewshot import FewShotConfig
    cfg = FewShotConfig.tiny(**overrides) if preset == "tiny" else FewShotConfig(**overrides)
    return fewshot_eval(Path(research), eval_id=eval_id, dataset_id=dataset_id, cfg=cfg, model=model,
                        weights=expand_home(weights), arch=arch, pretrained=pretrained)


@flow(name="few-shot", log_prints=False)
def few_shot(dataset_id: str, out: str | None = None, model: str = "sam-vit-b", weights: str | None = None,
             arch: str | None = None, pretrained: str | None = None, preset: str = "mri-core",
             overrides: dict | None = None, eval_id: str | None = None) -> dict:
    """MRI-CORE's few-shot segmentation (adapters in encoder blocks 0, 1, 10, 11 and the mask
    decoder; 5 training slices; R repeats) on a labelled dataset. ``preset``: mri-core | tiny."""
    research = research_dir(out)
    name = eval_id or f"fewshot-{pretrained or model}-{dataset_id}"
    res = fewshot_task(str(research), name, dataset_id, preset, dict(overrides or {}), model, weights, arch,
                       pretrained)
    s = res["summary"]
    get_run_logger().info("few-shot %s: test 3D DSC %.3f ± %.3f, 3D NSD %.3f ± %.3f", name,
                          s["test_dsc_3d"]["mean"], s["test_dsc_3d"]["std"], s["test_nsd_3d"]["mean"],
                          s["test_nsd_3d"]["std"])
    create_link_artifact(f"file://{res['curves_png']}", link_text="few-shot training curves (PNG)",
                         key="few-shot-curves")
    table = "\n".join(f"| {m} | {v['mean']:.3f} ± {v['std']:.3f} |" for m, v in s.items())
    create_markdown_artifact(f"# Few-shot `{name}`\n\n| metric | mean ± std |\n|---|---|\n{table}",
                             key="few-shot-summary")
    return res


@flow(name="transfer-analysis", log_prints=False)
def transfer(model_a: str, model_b: str, out: str | None = None, frd_eval_id: str = "frd",
             metric: str = "test_dsc_3d", eval_id: str | None = None) -> dict:
    """Few-shot gain of ``model_a`` over ``model_b`` per dataset against FRD (MRI-CORE fig. 4)."""
    from mrifoundry.tasks.evaluation.evaluate import transfer_eval
    research = research_dir(out)
    name = eval_id or f"transfer-{model_a}-vs-{model_b}"
    res = transfer_eval(research, eval_id=name, model_a=model_a, model_b=model_b, frd_eval_id=frd_eval_id,
                        metric=metric)
    create_link_artifact(f"file://{res['png']}", link_text="gain vs FRD (PNG)", key="transfer-plot")
    return {k: res[k] for k in ("n", "pearson", "spearman", "png")}
