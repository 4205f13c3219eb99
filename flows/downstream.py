"""Flow ``ingest-downstream``: a 3D downstream dataset into the catalog (docs/downstream.md).

Wiring only (tasks/ingest/runner.py ``run_ingest_downstream``). The salt never travels as a
parameter (Prefect stores parameters): the runner reads it from ``OUT/restricted/salt`` or
``MRIFOUNDRY_SALT``.
"""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mrifoundry.flows.wrap import takes
from mrifoundry.params import DownstreamParams
from mrifoundry.tasks.ingest.runner import run_ingest_downstream

__all__ = ["ingest_downstream_flow"]


@flow(name="ingest-downstream", log_prints=False)
@takes(DownstreamParams)
def ingest_downstream_flow(params: DownstreamParams) -> dict:
    """Ingest ``root`` (MSD/nnU-Net, BraTS, images/+labels/, DICOM-SEG cases or a classification
    CSV) as ``dataset_id``: volumes conformed to RAS (``voxel_size_mm``; None = native), a
    patient-level split and k-fold, rows in ``labelled_volumes``. ``labels``: a label mapping,
    ``{"1": 1, "2": 1}`` or ``{"whole_tumor": [1, 2, 4]}``."""
    logger = get_run_logger()
    res = run_ingest_downstream(params, progress=lambda line: logger.info("%s", line))
    skipped = "".join(f"\n- `{s['case']}`: {s['reason']}" for s in res["skipped"][:50])
    create_markdown_artifact(f"# Downstream dataset `{params.dataset_id}`\n\n{res['task']}, layout {res['layout']}: "
                             f"**{res['n_volumes']}** volumes, {res['n_patients']} patients, channels "
                             f"{', '.join(res['channels'])}; skipped {len(res['skipped'])}{skipped}",
                             key="ingest-downstream")
    return res
