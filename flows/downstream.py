"""Flow ``ingest-downstream``: a 3D downstream dataset into the catalog (docs/downstream.md).

Wiring only (tasks/evaluation/downstream/). The salt never travels as a parameter (Prefect
stores parameters): the task reads it from ``OUT/restricted/salt`` or ``MRIFOUNDRY_SALT``.
"""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from mrifoundry.flows.params import expand_home, research_dir


@task(name="ingest-downstream")
def ingest_task(research: str, root: str, dataset_id: str, layout: str, labels: dict | None, strict_labels: bool,
                voxel_size_mm: float | None, split: list[float], folds: int | None, seed: int) -> dict:
    from mrifoundry.tasks.evaluation.downstream import ingest_downstream
    return ingest_downstream(Path(research), Path(root), dataset_id, layout=layout, labels=labels,
                             strict_labels=strict_labels, voxel_size_mm=voxel_size_mm, split=tuple(split),
                             folds=folds, seed=seed)


@flow(name="ingest-downstream", log_prints=False)
def ingest_downstream_flow(root: str, dataset_id: str, out: str | None = None, layout: str = "auto",
                           labels: dict | None = None, strict_labels: bool = False,
                           voxel_size_mm: float | None = 1.0, split: tuple[float, float, float] = (0.6, 0.2, 0.2),
                           folds: int | None = 5, seed: int = 0) -> dict:
    """Ingest ``root`` (MSD/nnU-Net, BraTS, images/+labels/, DICOM-SEG cases or a classification
    CSV) as ``dataset_id``: volumes conformed to RAS (``voxel_size_mm``; None = native), a
    patient-level split and k-fold, rows in ``labelled_volumes``. ``labels``: a label mapping,
    ``{"1": 1, "2": 1}`` or ``{"whole_tumor": [1, 2, 4]}``."""
    research = research_dir(out)
    res = ingest_task(str(research), expand_home(root), dataset_id, layout, labels, strict_labels, voxel_size_mm,
                      list(split), folds, seed)
    get_run_logger().info("ingest-downstream %s: %d volumes of %d patients, %d skipped", dataset_id,
                          res["n_volumes"], res["n_patients"], len(res["skipped"]))
    skipped = "".join(f"\n- `{s['case']}`: {s['reason']}" for s in res["skipped"][:50])
    create_markdown_artifact(f"# Downstream dataset `{dataset_id}`\n\n{res['task']}, layout {res['layout']}: "
                             f"**{res['n_volumes']}** volumes, {res['n_patients']} patients, channels "
                             f"{', '.join(res['channels'])}; skipped {len(res['skipped'])}{skipped}",
                             key="ingest-downstream")
    return res


__all__ = ["ingest_downstream_flow"]
