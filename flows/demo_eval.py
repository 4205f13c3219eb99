"""Flow ``demo-eval``: every evaluation on the demo catalog → ``research/evaluations/demo-report.md``.

Wiring only (tasks/evaluation/demo.py ``run_demo_eval``, which calls the evaluation runners
directly, and the plain pretrain runner for the 3D half).
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mrifoundry.flows.wrap import takes
from mrifoundry.params import DemoEvalParams
from mrifoundry.tasks.evaluation.demo import DATASETS, run_demo_eval

__all__ = ["DATASETS", "demo_eval"]


@flow(name="demo-eval", log_prints=False)
@takes(DemoEvalParams)
def demo_eval(params: DemoEvalParams) -> dict:
    """Probing, zero-shot (and the rest of docs/evaluation.md) on the demo catalog → a report."""
    logger = get_run_logger()
    res = run_demo_eval(params, progress=lambda line: logger.info("%s", line))
    create_markdown_artifact(res.pop("markdown"), key="demo-eval-report", description="demo evaluation report")
    return res
