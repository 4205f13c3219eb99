"""3D downstream flows: ``finetune-3d`` (segmentation) and ``classify-3d`` (k-fold classification).

Wiring only (tasks/evaluation/volume_runs.py; the training in tasks/evaluation/finetune3d.py,
classify3d.py; the records in volume_eval.py). A model is a volume zoo entry (triad-unet,
triad-swin, brainsegfounder, prism) with local weights, a random init of it (no weights), or a
``pretrain`` run of the catalog (``pretrained=<model_id>``). The dataset is a ``labelled_volumes``
dataset of the catalog (flow ``ingest-downstream``). Results land in the ``evaluations`` table
(kinds ``finetune-3d`` / ``classify-3d``); pictures are linked as artifacts.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact

from mrifoundry.flows.wrap import takes
from mrifoundry.params import Classify3dParams, Finetune3dParams
from mrifoundry.tasks.evaluation.volume_runs import run_classify_3d, run_finetune_3d

__all__ = ["classify_3d", "finetune_3d"]


def _log(line: str) -> None:
    get_run_logger().info("%s", line)


@flow(name="finetune-3d", log_prints=False)
@takes(Finetune3dParams)
def finetune_3d(params: Finetune3dParams) -> dict:
    """Fine-tune a volume encoder with a SwinUNETR or UNETR decoder (``decoder``) on a labelled
    3D dataset's train split, test on its test split by sliding windows: DSC and NSD per label.
    ``preset``: default | tiny (tasks.evaluation.finetune3d.Finetune3dConfig); ``overrides``:
    any other config field; ``label_fractions``: a sweep over shares of the training patients."""
    res = run_finetune_3d(params, progress=_log)
    if res["overlay_png"]:
        create_link_artifact(f"file://{res['overlay_png']}", link_text="prediction vs label (PNG)",
                             key="finetune-3d-overlay")
    create_markdown_artifact(res.pop("markdown"), key="finetune-3d-summary")
    return res


@flow(name="classify-3d", log_prints=False)
@takes(Classify3dParams)
def classify_3d(params: Classify3dParams) -> dict:
    """Classify whole volumes of a labelled 3D dataset (``mode``: finetune | linear), k-fold over its
    ``fold`` column: AUROC, accuracy, balanced accuracy as mean ± std over folds."""
    res = run_classify_3d(params, progress=_log)
    create_link_artifact(f"file://{res['roc_png']}", link_text="ROC curves per fold (PNG)", key="classify-3d-roc")
    create_markdown_artifact(res.pop("markdown"), key="classify-3d-summary")
    return res
