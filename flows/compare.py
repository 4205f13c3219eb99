"""Flow ``compare``: paired statistics of a baseline model's evaluations against the others.

Wiring only: runs tasks/evaluation/compare.py ``run_compare`` (rows in the catalog's
``comparisons`` table) and shows its markdown table as an artifact. More in docs/evaluation.md
(Statistics).
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mrifoundry.flows.wrap import takes
from mrifoundry.params import CompareParams
from mrifoundry.tasks.evaluation.compare import run_compare

__all__ = ["compare_flow"]


@flow(name="compare", log_prints=False)
@takes(CompareParams)
def compare_flow(params: CompareParams) -> dict:
    """Every evaluation of ``baseline`` against the other evaluations of the same dataset, kind and
    metric, paired by repeat: mean ± sd, Wilcoxon signed-rank p, bootstrap 95 % CI of the difference."""
    logger = get_run_logger()
    res = run_compare(params, progress=lambda line: logger.info("%s", line))
    create_markdown_artifact(res["markdown"], key="compare-summary", description="paired model comparison")
    return {k: v for k, v in res.items() if k != "markdown"}
