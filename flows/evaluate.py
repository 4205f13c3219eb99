"""Evaluation flows: ``linear-probe``, ``zero-shot``, ``frd``, ``few-shot``, ``transfer-analysis``.

Wiring only: each flow runs its plain runner (tasks/evaluation/runs.py) and shows the result as
artifacts. A model is a zoo entry with local weights, or a ``pretrain`` run of the catalog
(``pretrained=<model_id>``; tasks/evaluation/model_choice.py). Results land in the catalog's
``evaluations`` table; pictures are linked as artifacts. More in docs/evaluation.md.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from mrifoundry.flows.wrap import takes
from mrifoundry.params import EpochSweepParams, FewShotParams, FrdParams, ProbeParams, TransferParams, ZeroShotParams
from mrifoundry.tasks.evaluation.runs import run_few_shot, run_frd, run_linear_probe, run_transfer, run_zero_shot

__all__ = ["epoch_sweep", "few_shot", "frd_flow", "linear_probe", "transfer", "zero_shot"]


def _log(line: str) -> None:
    get_run_logger().info("%s", line)


def _result(res: dict) -> dict:
    """The runner's result without the markdown (shown as an artifact instead)."""
    return {k: v for k, v in res.items() if k != "markdown"}


@flow(name="linear-probe", log_prints=False)
@takes(ProbeParams)
def linear_probe(params: ProbeParams) -> dict:
    """Linear probing: ``query`` returns patient_id, label and png_file (slice models) or
    nifti_file (volume models: triad-unet, triad-swin, brainsegfounder, prism or their
    pretrain runs); label-balanced patient-level 60:40 split. Default query: tasks.evaluation.evaluate.PROBE_QUERIES
    (body part of training slices; sequence type of converted volumes)."""
    res = run_linear_probe(params, progress=_log)
    create_link_artifact(f"file://{res['confusion_png']}", link_text="confusion matrix (PNG)", key="probe-confusion")
    create_markdown_artifact(res["markdown"], key="probe-summary")
    return _result(res)


@flow(name="zero-shot", log_prints=False)
@takes(ZeroShotParams)
def zero_shot(params: ZeroShotParams) -> dict:
    """Zero-shot segmentation of a labelled dataset by k-means over patch features."""
    res = run_zero_shot(params, progress=_log)
    for i, p in enumerate(res["overlays"]):
        create_link_artifact(f"file://{p}", link_text=f"k-means overlay {i + 1} (PNG)", key=f"zero-shot-overlay-{i + 1}")
    create_markdown_artifact(res["markdown"], key="zero-shot-summary")
    return _result(res)


@flow(name="frd", log_prints=False)
@takes(FrdParams)
def frd_flow(params: FrdParams) -> dict:
    """FRDv1 (frd-score) of labelled datasets against the pretraining slices (dataset 1),
    ``n`` images per side drawn with ``seed``; features cached, so a second FRD against the
    same reference recomputes nothing for it."""
    res = run_frd(params, progress=_log)
    create_markdown_artifact(res["markdown"], key="frd-summary")
    return res["datasets"]


@flow(name="few-shot", log_prints=False)
@takes(FewShotParams)
def few_shot(params: FewShotParams) -> dict:
    """MRI-CORE's few-shot segmentation on a labelled dataset: SAM's prompt encoder and mask decoder
    from ``sam_checkpoint``, then ``mode`` adapter (MRI-CORE: encoder blocks 0, 1, 10, 11 and the
    decoder), lora (finetune-SAM: r = 4 on q and v) or full; 5 training and 5 validation slices; R
    repeats. ``preset``: mri-core | tiny."""
    res = run_few_shot(params, progress=_log)
    create_link_artifact(f"file://{res['curves_png']}", link_text="few-shot training curves (PNG)",
                         key="few-shot-curves")
    create_markdown_artifact(res["markdown"], key="few-shot-summary")
    return _result(res)


@flow(name="transfer-analysis", log_prints=False)
@takes(TransferParams)
def transfer(params: TransferParams) -> dict:
    """Few-shot gain of ``model_a`` over ``model_b`` per dataset against FRD (MRI-CORE fig. 4)."""
    res = run_transfer(params, progress=_log)
    create_link_artifact(f"file://{res['png']}", link_text="gain vs FRD (PNG)", key="transfer-plot")
    return res


@flow(name="epoch-sweep", log_prints=False)
@takes(EpochSweepParams)
def epoch_sweep(params: EpochSweepParams) -> dict:
    """MRI-CORE's epoch study with the linear-probe proxy: every saved checkpoint of a slice pretrain
    run probed; the best named (tasks/evaluation/epoch_sweep.py)."""
    from mrifoundry.tasks.evaluation.epoch_sweep import run_epoch_sweep
    res = run_epoch_sweep(params, progress=_log)
    create_link_artifact(f"file://{res['png']}", link_text="probe accuracy per epoch (PNG)", key="epoch-sweep-plot")
    create_markdown_artifact(res["markdown"], key="epoch-sweep-summary")
    return {k: res[k] for k in ("points", "best", "png")}
