"""The ``nnunet-baseline`` flow: nnU-Net v2 on the few-shot split (tasks/evaluation/nnunet_baseline.py).

Wiring only: the plain runner does the export, nnU-Net's planning, preprocessing, training and
prediction (a child process, its output in the evaluation's ``nnunet/nnunet.log``) and the
``evaluations`` rows (kind ``few-shot``, model ``nnunet-v2``); the flow logs the progress lines
and shows the summary as an artifact. More in docs/evaluation.md ("Baselines").
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mrifoundry.flows.wrap import takes
from mrifoundry.params import NnunetParams
from mrifoundry.tasks.evaluation.nnunet_baseline import run_nnunet

__all__ = ["nnunet_baseline"]


@flow(name="nnunet-baseline", log_prints=False)
@takes(NnunetParams)
def nnunet_baseline(params: NnunetParams) -> dict:
    """nnU-Net v2 (its own planning, preprocessing and augmentation; 2D) trained on the few-shot
    split of each repeat and scored on the test split with few-shot's metrics."""
    res = run_nnunet(params, progress=lambda line: get_run_logger().info("%s", line))
    create_markdown_artifact(res["markdown"], key="nnunet-summary")
    return {k: v for k, v in res.items() if k != "markdown"}
