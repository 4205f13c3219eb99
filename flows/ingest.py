"""Flow ``ingest``: a NIfTI or BIDS collection → the same research catalog as curated DICOM.

Wiring only (tasks/curation/ingest/). The flow parameters are a folder path, a dataset name and
conversion options; subject labels, file names and sidecars never become task arguments.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_progress_artifact, \
    update_progress_artifact

from mrifoundry.flows.curate import _run_id, finalize_task, phi_audit_task
from mrifoundry.flows.params import expand_home, research_dir
from mrifoundry.run_lock import RunLock


@task(name="ingest-files")
def ingest_task(out: str, root: str, layout: str, dataset: str, voxel_size_mm: float | None,
                nifti_shape: list[int] | None, body_part: str | None, rerun: str, workers: int, run_id: str) -> dict:
    from mrifoundry.tasks.curation.ingest import IngestParams, ingest_collection
    logger = get_run_logger()
    bar = create_progress_artifact(progress=0.0, description=f"ingest {dataset}: files")

    def progress(i: int, n: int, rate: float) -> None:
        if i == n or i % 25 == 0:
            logger.info("ingest: %d/%d files (%.2f files/s)", i, n, rate)
            update_progress_artifact(bar, progress=100.0 * i / max(n, 1))

    params = IngestParams(layout, dataset, voxel_size_mm, tuple(nifti_shape) if nifti_shape else None, body_part,
                          rerun=rerun, workers=workers)
    return ingest_collection(Path(out), Path(root), params, run_id=run_id, progress=progress)


@flow(name="ingest", log_prints=False)
def ingest(bids: str | None = None, nifti: str | None = None, dataset: str | None = None, out: str | None = None,
           voxel_size_mm: float | None = 1.0, nifti_shape: list[int] | None = None, body_part: str | None = None,
           rerun: Literal["failed", "all"] = "failed", workers: int = 2, phi_audit: bool = True) -> dict:
    """Ingest ``bids`` (a BIDS dataset) or ``nifti`` (a folder of NIfTI files, subject = first
    folder) as ``dataset`` into OUT/research: RAS, ``voxel_size_mm`` (None = native), QC reasons
    in the ledger (stage ``ingest``), de-duplication by voxel digest, ``workers`` threads, then the
    PHI audit."""
    if (bids is None) == (nifti is None):
        raise ValueError("give exactly one of bids= or nifti=")
    layout, root = ("bids", bids) if bids else ("nifti", nifti)
    root = expand_home(root)
    dataset = dataset or Path(root).resolve().name
    out_dir = research_dir(out).parent
    run_id = _run_id()
    with RunLock(out_dir / "state"):
        run = ingest_task(str(out_dir), root, layout, dataset, voxel_size_mm, nifti_shape, body_part, rerun, workers,
                          run_id)
        counts = finalize_task(str(out_dir), run_id)
        from mrifoundry.tasks.curation.ingest.report import ingest_summary
        md, montage = ingest_summary(out_dir / "research", dataset, run)
        create_markdown_artifact(md, key="ingest-summary", description=f"ingest of {dataset}")
        if montage:
            create_link_artifact(f"file://{montage.resolve()}", link_text="mid-slice montage (PNG)",
                                 key="ingest-montage")
        get_run_logger().info("catalog: %s", ", ".join(f"{k}={v}" for k, v in counts.items()))
        if phi_audit:
            phi_audit_task(str(out_dir), None)
    return {**run, "catalog": counts}
