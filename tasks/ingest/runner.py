"""The ingest runs without Prefect: ``run_ingest`` (a NIfTI/BIDS collection → the catalog) and
``run_ingest_downstream`` (a labelled 3D dataset → ``labelled_volumes``).

The ``mrifoundry`` command calls them as they are; the ``ingest`` and ``ingest-downstream``
flows wrap them (flows/ingest.py, flows/downstream.py). Both resolve ``out`` and ``{home}``
themselves (:mod:`mrifoundry.settings`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from mrifoundry.params import DownstreamParams, IngestParams
from mrifoundry.run_lock import RunLock
from mrifoundry.settings import expand_home, research_dir
from mrifoundry.tasks.curation.finalize import finalize_catalog
from mrifoundry.tasks.curation.runner import audit_or_quarantine
from mrifoundry.tasks.curation.workspace import Workspace
from mrifoundry.tasks.ingest.collection import dataset_of, ingest_collection, layout_of
from mrifoundry.tasks.ingest.collection.report import ingest_summary
from mrifoundry.tasks.ingest.labelled3d import ingest_downstream

__all__ = ["run_ingest", "run_ingest_downstream"]
log = logging.getLogger(__name__)


def _say(progress: Callable[[str], None] | None) -> Callable[[str], None]:
    return progress or (lambda line: log.info("%s", line))


def run_ingest(params: IngestParams, *, run_id: str = "local", progress: Callable[[str], None] | None = None) -> dict:
    """Ingest ``params.bids`` or ``params.nifti`` into OUT/research under the run lock, merge the
    catalog, write the summary and montage, then (``params.phi_audit``) audit the whole output.

    Returns:
        ``ingest_collection``'s counts (dataset, files, exams, outcomes, unnamed) plus ``catalog``
        (rows per table), ``summary`` (markdown, no values), ``montage`` (path or None) and
        ``phi_audit`` (the audit's markdown, None when off) and ``review_page`` (the rebuilt QC page).
    Raises:
        ValueError: bad parameters; FileNotFoundError: the folder is missing or not BIDS.
        mrifoundry.run_lock.OutputBusy: another run holds the output folder.
        PhiLeakError: the audit found an identifier outside the restricted zone (leaking exams
            quarantined, report in restricted/).
    """
    say = _say(progress)
    layout, root = layout_of(params)
    params = params.model_copy(update={layout: expand_home(str(root))})
    params = params.model_copy(update={"dataset": dataset_of(params)})
    out_dir = research_dir(params.out).parent

    def files(i: int, n: int, rate: float) -> None:
        if i == n or i % 25 == 0:
            say(f"{i}/{n} files ({rate:.2f}/s)")

    with RunLock(out_dir / "state"):
        run = ingest_collection(out_dir, params, run_id=run_id, progress=files)
        counts = finalize_catalog(Workspace(out_dir, run_id))
        say("catalog: " + ", ".join(f"{k}={v}" for k, v in counts.items()))
        md, montage = ingest_summary(out_dir / "research", params.dataset, run)
        page = _review_page(out_dir, params, run_id, say)
        audit = None
        if params.phi_audit:
            from mrifoundry.tasks.curation.audit.phi_audit import PhiLeakError
            try:
                audit = audit_or_quarantine(out_dir, None, params.workers).to_markdown()
            except PhiLeakError:   # the quarantine moved exams out of research/: the page must not show them
                _review_page(out_dir, params, run_id, say)
                raise
    return {**run, "catalog": counts, "summary": md, "montage": str(montage) if montage else None,
            "phi_audit": audit, "review_page": page}


def _review_page(out_dir: Path, params: IngestParams, run_id: str, say) -> str | None:
    if not params.review_page:
        return None
    from mrifoundry.tasks.curation.review.page import build_review_page
    return build_review_page(out_dir / "research", run_id=run_id, progress=say)["page"]


def run_ingest_downstream(params: DownstreamParams, *, progress: Callable[[str], None] | None = None) -> dict:
    """Ingest ``params.root`` (MSD/nnU-Net, BraTS, images+labels, DICOM-SEG, classification CSV) as
    ``params.dataset_id`` into OUT/research's ``labelled_volumes``. The salt is read from
    ``OUT/restricted/salt`` or ``MRIFOUNDRY_SALT``, never passed.

    Returns:
        ``ingest_downstream``'s summary (task, layout, n_volumes, n_patients, channels, skipped …).
    Raises:
        FileNotFoundError, ValueError: see :func:`tasks.ingest.labelled3d.ingest_downstream`.
    """
    say = _say(progress)
    research = research_dir(params.out)
    res = ingest_downstream(research, Path(expand_home(params.root)), params.dataset_id, layout=params.layout,
                            labels=params.labels, strict_labels=params.strict_labels,
                            voxel_size_mm=params.voxel_size_mm, split=tuple(params.split),
                            folds=params.folds or None, seed=params.seed, progress=say)
    say(f"ingest-downstream {params.dataset_id}: {res['n_volumes']} volumes of {res['n_patients']} patients, "
        f"{len(res['skipped'])} skipped")
    return res
