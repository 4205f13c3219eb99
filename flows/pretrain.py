"""Flow ``pretrain``: tasks/pretraining/runner.py::run_pretrain under Prefect.

The runner does the work (recipe, query, inputs, training, report, ``models`` row); the flow
adds a progress artifact and log lines from its progress, and the run's summary (markdown)
and loss curve (link) as artifacts.
"""
from __future__ import annotations

import re

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, \
    update_progress_artifact

from mrifoundry.flows.wrap import takes
from mrifoundry.params import PretrainParams
from mrifoundry.tasks.pretraining.runner import run_pretrain

_ITERATION = re.compile(r"^iteration (\d+)/(\d+)")


@flow(name="pretrain", log_prints=False)
@takes(PretrainParams)
def pretrain(params: PretrainParams) -> dict:
    """Pretrain an encoder on what ``query`` selects from the catalog under ``out``; checkpoints go to
    OUT/research/models/<run_name>/ and a re-run of the same ``run_name`` resumes it. Recipes
    (tasks/pretraining/recipes.py): slices — mri-core, mae, brainfound; volumes — triad, triad-unet,
    brainsegfounder (``stage2_query``: model ``<run_name>-stage2``), prism; each also ``-tiny``."""
    logger = get_run_logger()
    bar = create_progress_artifact(0.0, description="pretrain: iterations")

    def progress(line: str) -> None:
        logger.info("%s", line)
        if m := _ITERATION.match(line):
            update_progress_artifact(bar, 100.0 * int(m[1]) / max(int(m[2]), 1))

    res = run_pretrain(params, progress=progress)
    create_markdown_artifact(res.pop("summary_markdown"), key="pretrain-summary",
                             description="pretraining run summary")
    create_link_artifact(f"file://{res.pop('loss_curve_png')}", link_text="loss curve (PNG)",
                         key="pretrain-loss-curve")
    return res
