"""Flow ``extract-features``: embed the slices of a catalog query with a zoo model.

Wiring only (tasks/evaluation/runs.py ``run_features``). The features land in the catalog (views
``features``, ``feature_sets``) for probing and FRD.
"""
from __future__ import annotations

import re

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from mrifoundry.flows.wrap import takes
from mrifoundry.params import FeaturesParams
from mrifoundry.tasks.evaluation.runs import DEFAULT_QUERIES, run_features

__all__ = ["DEFAULT_QUERIES", "extract_features_flow"]


@flow(name="extract-features", log_prints=False)
@takes(FeaturesParams)
def extract_features_flow(params: FeaturesParams) -> dict:
    """Embed ``query``'s slices (it returns slice_id) with zoo entry ``model`` loaded from the
    local ``weights`` ({home} expands to MRIFOUNDRY_HOME) — or, for a volume encoder
    (triad-unet, triad-swin, brainsegfounder, prism), the NIfTI volumes of the series it
    returns (series_id); default query in ``DEFAULT_QUERIES``. Writes feature set
    ``feature_set`` (default: the model name). ``pretrained=<model_id>`` takes a run of the
    ``pretrain`` flow from the catalog's ``models`` table instead (its latest checkpoint and
    arch, loaded through the zoo entry of its method)."""
    logger = get_run_logger()
    name = params.feature_set or params.pretrained or params.model
    bar = create_progress_artifact(0.0, description=f"extract-features {name}")

    def progress(line: str) -> None:   # "embedded 12/40 slices (3.1 slices/s)"
        logger.info("%s", line)
        if m := re.search(r"(\d+)/(\d+)", line):
            update_progress_artifact(bar, 100.0 * int(m[1]) / max(int(m[2]), 1))

    row = run_features(params, progress=progress)
    create_markdown_artifact(row.pop("markdown"), key="features-summary", description="feature extraction summary")
    return row
