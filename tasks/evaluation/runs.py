"""Plain runners of the 2D evaluations and of feature extraction: ``run_<name>(params, *, progress=None) -> dict``.

Each resolves ``params.out`` to OUT/research, picks the defaults (eval_id naming, default
queries, preset + overrides → config) once, runs the evaluation of tasks/evaluation/evaluate.py
(rows in the catalog's ``evaluations`` table) and returns what its Prefect flow returns plus
``markdown``: the summary the flow shows as an artifact. ``progress`` takes one line of text.
Prefect-free: the flows (flows/evaluate.py, flows/features.py) and the CLI call these.
"""
from __future__ import annotations

from collections.abc import Callable

from mrifoundry import settings
from mrifoundry.params import FeaturesParams, FewShotParams, FrdParams, ProbeParams, TransferParams, ZeroShotParams
from mrifoundry.tasks.evaluation.model_choice import choice_of, load_model

__all__ = ["DEFAULT_QUERIES", "run_features", "run_few_shot", "run_frd", "run_linear_probe", "run_transfer",
           "run_zero_shot"]

Progress = Callable[[str], None] | None

#: Default feature query per input kind: every training slice, or every converted volume.
DEFAULT_QUERIES = {"slice": "SELECT slice_id FROM training_slices",
                   "volume": "SELECT series_id FROM series WHERE nifti_path IS NOT NULL"}


def _say(progress: Progress) -> Callable[[str], None]:
    return progress or (lambda line: None)


def run_features(params: FeaturesParams, *, progress: Progress = None) -> dict:
    """Embed the slices (or, for a volume encoder, the volumes) of ``params.query`` into feature
    set ``feature_set`` (default: the run or model name); returns the ``feature_sets`` row."""
    import torch

    from mrifoundry.tasks.evaluation.embedding import extract_features
    say = _say(progress)
    research = settings.research_dir(params.out)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_model(research, choice_of(params), image_size=params.image_size, device=device)
    name = params.feature_set or params.pretrained or params.model
    unit = "volume" if getattr(loaded.model, "family", None) == "volume" else "slice"

    def on_progress(done: int, total: int, rate: float) -> None:
        say(f"embedded {done}/{total} {unit}s ({rate:.1f} {unit}s/s)")

    row = extract_features(research, params.query or DEFAULT_QUERIES[unit], loaded.model, name,
                           weights=loaded.weights, batch_size=params.batch_size, patch_grids=params.patch_grids,
                           pool=params.pool, device=device, on_progress=on_progress)
    row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
    table, side = ("volume_features", "³") if row["unit"] == "volume" else ("features", "²")
    md = (f"# Features `{name}`\n\n- model **{row['model']}** ({row['weights']}, sha256 {row['weights_sha256']})\n"
          f"- {row['n_slices']} {row['unit']}s at {row['image_size']}{side}, dim {row['dim']}, pool {row['pool']}, "
          f"patch grids {'yes' if row['patch_grids'] else 'no'}\n\n"
          f"```sql\nSELECT * FROM {table} WHERE feature_set = '{name}'\n```")
    return {**row, "markdown": md}


def run_linear_probe(params: ProbeParams, *, progress: Progress = None) -> dict:
    """Linear probing (eval_id default ``probe-<run or model>``; query default per input kind,
    tasks.evaluation.evaluate.PROBE_QUERIES)."""
    from mrifoundry.tasks.evaluation.evaluate import PROBE_QUERIES, linear_probe_eval
    research = settings.research_dir(params.out)
    name = params.eval_id or f"probe-{params.pretrained or params.model}"
    loaded = load_model(research, choice_of(params), image_size=params.image_size, seed=params.seed)
    query = params.query or PROBE_QUERIES["volumes" if getattr(loaded.model, "family", None) == "volume"
                                          else "slices"]
    res = linear_probe_eval(research, loaded.model, eval_id=name, model_label=loaded.label,
                            weights_sha=loaded.weights_sha, query=query, epochs=params.epochs, seed=params.seed,
                            repeats=params.repeats)
    acc, bal = (f"{res[m]:.3f}" + (f" ± {res[m + '_std']:.3f}" if res[m + "_std"] is not None else "")
                for m in ("accuracy", "balanced_accuracy"))
    _say(progress)(f"linear probe {name}: accuracy {acc} (balanced {bal}) over {res['repeats']} split(s), "
                   f"{res['n_test']} test {res['unit']} in the first")
    md = (f"# Linear probe `{name}`\n\naccuracy **{acc}**, balanced {bal} (mean ± sample sd over {res['repeats']} "
          f"split(s)), {res['n_test']} test {res['unit']} in the first, classes {', '.join(res['classes'])}")
    return {**res, "markdown": md}


def run_zero_shot(params: ZeroShotParams, *, progress: Progress = None) -> dict:
    """Zero-shot k-means segmentation (eval_id default ``zeroshot-<run or model>-<dataset>``);
    ``dice_per_k`` keyed by str(k)."""
    from mrifoundry.tasks.evaluation.evaluate import zero_shot_eval
    from mrifoundry.tasks.evaluation.zero_shot import RAW_PIXELS, raw_pixels
    research = settings.research_dir(params.out)
    name = params.eval_id or f"zeroshot-{params.pretrained or params.model}-{params.dataset_id}"
    if params.model == RAW_PIXELS and not params.pretrained:  # the baseline: k-means on pixel intensities
        loaded = raw_pixels(params.image_size)
    else:
        loaded = load_model(research, choice_of(params), image_size=params.image_size, seed=params.seed)
    res = zero_shot_eval(research, loaded.model, eval_id=name, model_label=loaded.label,
                         weights_sha=loaded.weights_sha, dataset_id=params.dataset_id, split=params.split,
                         k_values=tuple(params.k_values), seed=params.seed, repeats=params.repeats)
    res = {**res, "dice_per_k": {str(k): v for k, v in res["dice_per_k"].items()},
           "dice_std_per_k": {str(k): v for k, v in res["dice_std_per_k"].items()}}
    _say(progress)(f"zero-shot {name}: best k={res['best_k']}, mean DSC per k over {res['repeats']} k-means "
                   f"seed(s) {res['dice_per_k']}")
    sd = {k: (f" ± {v:.3f}" if v is not None else "") for k, v in res["dice_std_per_k"].items()}
    table = "\n".join(f"| {k} | {v:.3f}{sd[k]} |" for k, v in res["dice_per_k"].items())
    return {**res, "markdown": f"# Zero-shot `{name}`\n\nDSC: mean ± sample sd over {res['repeats']} k-means "
                               f"seed(s)\n\n| k | DSC |\n|---|---|\n{table}"}


def run_few_shot(params: FewShotParams, *, progress: Progress = None) -> dict:
    """MRI-CORE's few-shot segmentation (eval_id default ``fewshot-<run or model>-<dataset>``, ``-lora`` /
    ``-full`` appended for those modes; ``preset`` mri-core | tiny, then ``overrides``; ``mode`` from
    the params). The decoder loads from ``sam_checkpoint``; without one the run is refused
    (UsageError) unless ``random_decoder``."""
    from mrifoundry.errors import UsageError
    from mrifoundry.tasks.evaluation.evaluate import fewshot_eval
    from mrifoundry.tasks.evaluation.fewshot import FewShotConfig
    research = settings.research_dir(params.out)
    suffix = "" if params.mode == "adapter" else f"-{params.mode}"
    name = params.eval_id or f"fewshot-{params.pretrained or params.model}-{params.dataset_id}{suffix}"
    overrides = dict(params.overrides or {})
    if overrides.setdefault("mode", params.mode) != params.mode:
        raise UsageError(f"mode is {params.mode!r} but overrides say {overrides['mode']!r}: give --mode only")
    cfg = FewShotConfig.tiny(**overrides) if params.preset == "tiny" else FewShotConfig(**overrides)
    res = fewshot_eval(research, eval_id=name, dataset_id=params.dataset_id, cfg=cfg, choice=choice_of(params),
                       sam_checkpoint=params.sam_checkpoint, random_decoder=params.random_decoder)
    s = res["summary"]
    src = "random" if res["decoder_source"] == "random" else f"{res['decoder_source']} ({res['decoder_sha256']})"
    decoder = f"decoder {src}, {len(res['decoder_random_keys'])} decoder tensors random"
    _say(progress)(f"few-shot {name} ({cfg.mode}; {decoder}): test 3D DSC {s['test_dsc_3d']['mean']:.3f} ± "
                   f"{s['test_dsc_3d']['std']:.3f}, 3D NSD {s['test_nsd_3d']['mean']:.3f} ± "
                   f"{s['test_nsd_3d']['std']:.3f}")
    table = "\n".join(f"| {m} | {v['mean']:.3f} ± {v['std']:.3f} |" for m, v in s.items())
    return {**res, "markdown": f"# Few-shot `{name}`\n\nmode **{cfg.mode}**, {decoder}\n\n"
                               f"| metric | mean ± std |\n|---|---|\n{table}"}


def run_frd(params: FrdParams, *, progress: Progress = None) -> dict:
    """FRDv1 of each labelled dataset against the reference slices; ``{"datasets": {id: {frd,
    n_reference, n_other, n_features, cache_hits, cache_misses}}, "markdown"}``."""
    from mrifoundry.tasks.evaluation.evaluate import frd_eval
    research = settings.research_dir(params.out)
    raw = frd_eval(research, eval_id=params.eval_id, reference_sql=params.reference_sql,
                   dataset_ids=list(params.dataset_ids), n=params.n, seed=params.seed, workers=params.workers)
    res = {ds: {k: r[k] for k in ("frd", "n_reference", "n_other", "n_features", "cache_hits", "cache_misses")}
           for ds, r in raw.items()}
    lines = ["| dataset | FRD | n | features | cache hits / misses |", "|---|---|---|---|---|"]
    lines += [f"| {d} | {r['frd']:.3f} | {r['n_other']} | {r['n_features']} | {r['cache_hits']} / {r['cache_misses']} |"
              for d, r in res.items()]
    _say(progress)(f"FRD: { {d: round(r['frd'], 3) for d, r in res.items()} }")
    return {"datasets": res, "markdown": "# FRD against the pretraining set\n\n" + "\n".join(lines)}


def run_transfer(params: TransferParams, *, progress: Progress = None) -> dict:
    """Few-shot gain of ``model_a`` over ``model_b`` per dataset against FRD (eval_id default
    ``transfer-<a>-vs-<b>``); ``{n, pearson, spearman, png}``."""
    from mrifoundry.tasks.evaluation.evaluate import transfer_eval
    research = settings.research_dir(params.out)
    name = params.eval_id or f"transfer-{params.model_a}-vs-{params.model_b}"
    res = transfer_eval(research, eval_id=name, model_a=params.model_a, model_b=params.model_b,
                        frd_eval_id=params.frd_eval_id, metric=params.metric)
    _say(progress)(f"transfer {name}: {res['n']} datasets, Pearson r {res['pearson']['r']}, "
                   f"Spearman r {res['spearman']['r']}")
    return {k: res[k] for k in ("n", "pearson", "spearman", "png")}
