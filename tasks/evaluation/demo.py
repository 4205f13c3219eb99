"""``run_demo_eval``: every evaluation on the demo catalog, two labelled 2D demo tasks and a 3D one.

Tasks: the MNI152 white-matter segmentation task (real anatomy: nilearn's template and WM
map) and a phantom lesion task (mrifoundry/sample/labelled.py), ingested into the demo
catalog. Models: the tiny pretrain run of ``make demo-pretrain`` if present, and a random
tiny ViT as the baseline. 3D: a BraTS-style task (mrifoundry/sample/brats_like.py) fine-tuned
with the SwinUNETR decoder from BrainSegFounder-tiny pretrained on the demo's ingested BIDS corpus,
against a random init. Writes ``research/evaluations/demo-report.md`` with the numbers
and links to every picture. The evaluations run through the plain runners (tasks/evaluation/runs.py).
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mrifoundry import settings
from mrifoundry.atomic import write_text
from mrifoundry.params import (CompareParams, DemoEvalParams, FewShotParams, Finetune3dParams, FrdParams,
                               NnunetParams, PretrainParams, ProbeParams, ZeroShotParams)
from mrifoundry.tasks.evaluation.compare import run_compare
from mrifoundry.tasks.evaluation.runs import run_few_shot, run_frd, run_linear_probe, run_zero_shot
from mrifoundry.tasks.evaluation.volume_runs import run_finetune_3d

__all__ = ["DATASETS", "REGIONS", "run_demo_eval"]

DATASETS = {"mni-wm": "make_mni_wm_dataset", "phantom": "make_phantom_dataset"}
REGIONS = {"whole_tumor": [1, 2, 4], "tumor_core": [1, 4], "enhancing": [4]}
#: few-shot on the demo: the tiny preset, 3 repeats (seeds 0, 1, 2), scored at 32 px like nnU-Net below
FS_OVERRIDES = {"repeats": 3, "out_size": 32}
#: the metrics the demo report compares with the random baseline
COMPARED = ["balanced_accuracy", "dice_k4", "test_dsc_3d", "test_nsd_3d"]
PROBE_QUERY = ("SELECT png_file, patient_id, sequence_type AS label FROM training_slices "
               "WHERE sequence_type IN ('T1', 'T2', 'PD', 'STIR', 'DWI') USING SAMPLE 600 ROWS (reservoir, 0)")


def ingest_demo_tasks(research: Path) -> dict:
    """The two labelled 2D demo tasks into the catalog: {dataset_id: n_slices}."""
    from mrifoundry.sample import labelled as demo_sets
    from mrifoundry.tasks.ingest.labelled2d import ingest_nifti_pairs
    out = {}
    for dataset_id, maker in DATASETS.items():
        root = getattr(demo_sets, maker)(research.parent / "labelled-sources" / dataset_id, n_cases=6, seed=0)
        out[dataset_id] = ingest_nifti_pairs(research, root, dataset_id, seed=0)["n_slices"]
    return out


def _models(research: Path) -> list[dict]:
    """The random tiny baseline, plus the demo pretrain run when it exists."""
    from mrifoundry.catalog.views import connect
    con = connect(research)
    try:
        have = con.execute("SELECT model_id FROM models WHERE model_id = 'mri-core-tiny-demo' "
                           "AND checkpoint_path IS NOT NULL").fetchone()
    finally:
        con.close()
    models = [{"label": "random", "kw": {"model": "random", "arch": "vit_tiny", "image_size": 64}}]
    if have:
        models.append({"label": "mri-core-tiny-demo", "kw": {"pretrained": "mri-core-tiny-demo"}})
    return models


def _three_d(out: str, research: Path, progress: Callable[[str], None] | None) -> list[str]:
    """The 3D half on the demo: BrainSegFounder (tiny) pretrained on the ingested BIDS corpus, then
    fine-tuned with the SwinUNETR decoder on a BraTS-style task, against a random init."""
    from mrifoundry.catalog.views import connect
    from mrifoundry.sample.brats_like import make_brats_like_dataset
    from mrifoundry.tasks.ingest.labelled3d import ingest_downstream
    from mrifoundry.tasks.pretraining.runner import run_pretrain
    con = connect(research)
    try:
        n_bids = con.execute("SELECT count(*) FROM series r JOIN exams e USING (exam_id) WHERE e.dataset = 'demo-bids' "
                             "AND r.status = 'ok'").fetchone()[0]
    finally:
        con.close()
    if n_bids < 2:
        return ["## 3D", "", "No ingested BIDS volumes in the demo catalog (`make demo` ingests them): skipped.", ""]
    root = make_brats_like_dataset(research.parent / "labelled-sources" / "brats-like", n_cases=4, seed=0)
    ds = ingest_downstream(research, root, "brats-like", voxel_size_mm=None, labels=REGIONS, split=(0.5, 0.0, 0.5),
                           folds=2)
    run_pretrain(PretrainParams(out=out, recipe="brainsegfounder-tiny", run_name="bsf-tiny-demo",
                                overrides={"max_iterations": 20},
                                query="SELECT r.series_id, r.exam_id, r.nifti_file FROM series r JOIN exams e "
                                      "USING (exam_id) WHERE e.dataset = 'demo-bids' AND r.status = 'ok'"),
                 progress=progress)
    lines = ["## 3D: BraTS-style segmentation (SwinUNETR decoder, tiny, CPU)", "",
             f"{ds['n_volumes']} cases ({', '.join(ds['channels'])}); labels {ds['label_names']}. "
             "BrainSegFounder-tiny pretrained 20 iterations on the demo's ingested BIDS volumes, or random.", "",
             "| encoder | DSC whole tumour | tumour core | enhancing | mean | NSD mean | HD95 mean (mm) "
             "| lesion F1 mean | overlay |", "|---|---|---|---|---|---|---|---|---|"]
    for label, kw in (("random", {"model": "brainsegfounder", "arch": "swin_tiny"}),
                      ("bsf-tiny-demo", {"pretrained": "bsf-tiny-demo"})):
        res = run_finetune_3d(Finetune3dParams(dataset_id="brats-like", out=out, decoder="swinunetr", preset="tiny",
                                               roi=64, iterations=100, eval_id=f"demo-ft3d-{label}", **kw),
                              progress=progress)
        m = res["fractions"]["1.0"]["metrics"]
        lines.append(f"| {label} | {m['dice_1']:.3f} | {m['dice_2']:.3f} | {m['dice_3']:.3f} | {m['dice_mean']:.3f} | "
                     f"{m['nsd_mean']:.3f} | {m['hd95_mean']:.2f} | {m['lesion_f1_mean']:.3f} | "
                     f"[png]({res['overlay_png'] or ''}) |")
    return lines + ["", "Tiny models, 100 iterations, two test cases; region scores (WT ⊇ TC ⊇ ET): a pipeline check, "
                        "not a benchmark. HD95: both masks empty 0, one empty the field-of-view diagonal; lesion F1: "
                        "ATLAS rule (26-connected lesions, any-voxel overlap).", ""]


def _baselines(out: str, progress: Callable[[str], None] | None) -> list[str]:
    """The raw-pixel k-means zero-shot baseline and nnU-Net v2 on few-shot's split (same seeds)."""
    from mrifoundry.tasks.evaluation.nnunet_baseline import run_nnunet
    lines = ["## Baselines", ""]
    for d in DATASETS:
        zs = run_zero_shot(ZeroShotParams(dataset_id=d, out=out, eval_id=f"demo-zs-raw-pixels-{d}",
                                          k_values=[2, 4, 8, 16], model="raw-pixels"), progress=progress)
        nn = run_nnunet(NnunetParams(dataset_id=d, out=out, eval_id=f"demo-fs-nnunet-{d}", k_patients=3,
                                     n_val_patients=2, seed=0, repeats=3, image_size=32, epochs=2,
                                     iterations_per_epoch=5, val_iterations_per_epoch=1, workers=0), progress=progress)
        s = nn["summary"]
        lines += [f"- zero-shot {d}, raw-pixel k-means: DSC per k "
                  f"{', '.join(f'{k}: {v:.3f}' for k, v in zs['dice_per_k'].items())} (best k={zs['best_k']})",
                  f"- few-shot {d}, nnU-Net v2 (its own planning and preprocessing; 2 epochs × 5 iterations on "
                  f"CPU, 3 repeats on few-shot's splits): test 3D DSC {s['test_dsc_3d']['mean']:.3f} ± "
                  f"{s['test_dsc_3d']['std']:.3f}, 3D NSD {s['test_nsd_3d']['mean']:.3f} ± {s['test_nsd_3d']['std']:.3f}"]
    return lines + [""]


def _statistics(out: str, progress: Callable[[str], None] | None) -> list[str]:
    """Every model against the random baseline, paired by seed (tasks/evaluation/compare.py)."""
    res = run_compare(CompareParams(out=out, baseline="random", metrics=COMPARED, n_boot=2000), progress=progress)
    table = res["markdown"].split("\n", 2)[2]       # without the module's own title line
    return ["## Against the random baseline (mean ± sample sd over 3 seeds)", "", table, "",
            "With 3 paired repeats the smallest two-sided Wilcoxon p is 0.25: the demo shows the machinery, "
            "not significance. Every p can be recomputed from the catalog's `evaluation_repeats` "
            "(docs/evaluation.md, Statistics).", ""]


def _model_lines(label: str, probe: dict, zs: dict, fs: dict) -> list[str]:
    lines = [f"## {label}", "",
             "- linear probe (sequence type, label-balanced patient-level 60:40): "
             f"accuracy **{probe['accuracy']:.3f}** "
             f"(balanced {probe['balanced_accuracy']:.3f}); [confusion matrix]({probe['confusion_png']})"]
    for d, r in zs.items():
        lines.append(f"- zero-shot {d}: DSC per k {', '.join(f'{k}: {v:.3f}' for k, v in r['dice_per_k'].items())}"
                     f" (best k={r['best_k']}); overlays: " + ", ".join(f"[{i + 1}]({p})" for i, p in
                                                                       enumerate(r["overlays"])))
    for d, r in fs.items():
        sm = r["summary"]
        lines.append(f"- few-shot {d} (tiny preset, mode {r['mode']}; random SAM decoder: the demo has no "
                     f"SAM checkpoint): test 3D DSC {sm['test_dsc_3d']['mean']:.3f} ± "
                     f"{sm['test_dsc_3d']['std']:.3f}, 3D NSD {sm['test_nsd_3d']['mean']:.3f}; "
                     f"[curves]({r['curves_png']})")
    return lines + [""]


def run_demo_eval(params: DemoEvalParams, *, progress: Callable[[str], None] | None = None) -> dict:
    """Probing, zero-shot, few-shot, FRD and 3D fine-tuning (after pretraining BrainSegFounder-tiny,
    tasks/pretraining/runner.py) on the demo catalog → the report; ``{"report", "models", "markdown"}``."""
    say = progress or (lambda line: None)
    out = params.out
    research = settings.research_dir(out)
    counts = ingest_demo_tasks(research)
    say(f"labelled demo tasks: {counts}")
    lines = ["# Evaluation report (demo)", "", f"Labelled tasks (slices): {counts}.", ""]
    frd = run_frd(FrdParams(dataset_ids=list(DATASETS), out=out, n=20, eval_id="demo-frd"), progress=progress)
    lines += ["## FRD to the pretraining set (demo catalog slices; 20 images per side)", "",
              *[f"- {d}: FRD {r['frd']:.3f} ({r['n_features']} radiomic features)"
                for d, r in frd["datasets"].items()], ""]
    models = []
    for m in _models(research):
        label = m["label"]
        probe = run_linear_probe(ProbeParams(out=out, eval_id=f"demo-probe-{label}", epochs=50, query=PROBE_QUERY,
                                             **m["kw"]), progress=progress)
        zs = {d: run_zero_shot(ZeroShotParams(dataset_id=d, out=out, eval_id=f"demo-zs-{label}-{d}",
                                              k_values=[2, 4, 8, 16], **m["kw"]), progress=progress)
              for d in DATASETS}
        fs_kw = {"model": "random", "arch": "sam_tiny"} if label == "random" else {"pretrained": label}
        # no SAM checkpoint in the demo: the prompt encoder and mask decoder are random (said in the report)
        fs = {d: run_few_shot(FewShotParams(dataset_id=d, out=out, preset="tiny", eval_id=f"demo-fs-{label}-{d}",
                                            random_decoder=True, overrides=FS_OVERRIDES, **fs_kw), progress=progress)
              for d in DATASETS}
        models.append(label)
        lines += _model_lines(label, probe, zs, fs)
    lines += _baselines(out, progress)
    lines += _statistics(out, progress)
    lines += _three_d(out, research, progress)
    # gain vs FRD needs at least three datasets (two demo tasks here): `transfer-analysis`
    # runs on a lab's own datasets (docs/evaluation.md)
    report = write_text(research / "evaluations" / "demo-report.md", "\n".join(lines) + "\n")
    say(f"report: {report}")
    return {"report": str(report), "models": models, "markdown": "\n".join(lines)}
