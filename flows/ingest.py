"""Flow ``ingest``: a NIfTI or BIDS collection → the same research catalog as curated DICOM.

Wiring only (tasks/ingest/runner.py ``run_ingest``). The flow parameters are a folder path, a
dataset name and conversion options; subject labels, file names and sidecars never become
parameters or task arguments.
"""
from __future__ import annotations

import re
from pathlib import Path

from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, \
    update_progress_artifact
from prefect.runtime import flow_run

from mrifoundry.flows.wrap import takes
from mrifoundry.params import IngestParams
from mrifoundry.tasks.curation.audit.phi_audit import PhiLeakError
from mrifoundry.tasks.ingest.runner import run_ingest

__all__ = ["ingest"]


@flow(name="ingest", log_prints=False)
@takes(IngestParams)
def ingest(params: IngestParams) -> dict:
    """Ingest ``bids`` (a BIDS dataset) or ``nifti`` (a folder of NIfTI files, subject = first
    folder) as ``dataset`` into OUT/research: RAS, ``voxel_size_mm`` (None = native), QC reasons
    in the ledger (stage ``ingest``), de-duplication by voxel digest, ``workers`` threads, then the
    PHI audit."""
    logger = get_run_logger()
    name = f"ingest {params.dataset}" if params.dataset else "ingest"
    bar = create_progress_artifact(progress=0.0, description=f"{name}: files")

    def progress(line: str) -> None:   # "12/40 files (3.10/s)" or "catalog: …"
        logger.info("ingest: %s", line)
        if m := re.match(r"(\d+)/(\d+) files", line):
            update_progress_artifact(bar, progress=100.0 * int(m[1]) / max(int(m[2]), 1))

    try:
        res = run_ingest(params, run_id=str(flow_run.id) if flow_run.id else "local", progress=progress)
    except PhiLeakError as e:
        if e.report_path:
            create_markdown_artifact(Path(e.report_path).read_text(), key="phi-audit",
                                     description="PHI audit and quarantine (places only, no values)")
        raise
    create_markdown_artifact(res["summary"], key="ingest-summary", description=f"ingest of {res['dataset']}")
    if res["montage"]:
        create_link_artifact(f"file://{Path(res['montage']).resolve()}", link_text="mid-slice montage (PNG)",
                             key="ingest-montage")
    if res.get("review_page"):
        create_link_artifact(f"file://{Path(res['review_page']).resolve()}", link_text="QC review page (offline HTML)",
                             key="ingest-review-page")
    if res["phi_audit"] is not None:
        create_markdown_artifact(res["phi_audit"], key="phi-audit", description="PHI audit (places only, no values)")
    return res
