"""Flow ``ingest-labelled``: a labelled 2D dataset into the catalog (tasks/ingest/labelled2d_run.py)."""
from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact

from mrifoundry.flows.wrap import takes
from mrifoundry.params import Labelled2dParams
from mrifoundry.tasks.ingest.labelled2d_run import run_ingest_labelled


@flow(name="ingest-labelled", log_prints=False)
@takes(Labelled2dParams)
def ingest_labelled(params: Labelled2dParams) -> dict:
    """Ingest NIfTI pairs (nnU-Net / MSD raw), a PNG list or a mask folder as 2D slices, with an optional
    label mapping and an imported split."""
    res = run_ingest_labelled(params, progress=get_run_logger().info)
    skipped = "".join(f"\n- `{s['case']}`: {s['reason']}" for s in res["skipped"][:50])
    create_markdown_artifact(
        f"# Labelled dataset `{params.dataset_id}`\n\n{res['layout']}: **{res['n_slices']}** slices of "
        f"{res['n_patients']} patients {res['patients_per_split']}, split {res['split_source']}, labels "
        f"{res['label_names']}; skipped {len(res['skipped'])}{skipped}", key="ingest-labelled")
    return res
