"""Flow ``extract-features``: embed the slices of a catalog query with a zoo model.

Wiring only (tasks/features.py). The features land in the catalog (views ``features``,
``feature_sets``) for probing and FRD.
"""
from __future__ import annotations

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from flows.pretrain import _expand, _research
from tasks.features import extract_features


def pretrained_checkpoint(research, model_id: str) -> tuple[str, str]:
    """(checkpoint file, arch) of a ``models`` row.

    Raises:
        LookupError: no such run in the catalog, or it has no checkpoint yet.
    """
    from catalog.views import connect
    con = connect(research)
    try:
        row = con.execute("SELECT checkpoint_file, arch FROM models WHERE model_id = ?", [model_id]).fetchone()
    finally:
        con.close()
    if row is None or row[0] is None:
        raise LookupError(f"no pretrained model {model_id!r} with a checkpoint in the catalog's models table")
    return row[0], row[1]


@task(name="embed-slices")
def embed_task(research: str, query: str, model: str, weights: str | None, arch: str | None,
               image_size: int | None, feature_set: str, batch_size: int, patch_grids: bool, pool: str) -> dict:
    from pathlib import Path

    from models import zoo
    logger = get_run_logger()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = zoo.load(model, weights, arch=arch, image_size=image_size, device=device)
    progress = create_progress_artifact(0.0, description=f"extract-features {feature_set}: slices")

    def on_progress(done: int, total: int, rate: float) -> None:
        logger.info("embedded %d/%d slices (%.1f slices/s)", done, total, rate)
        update_progress_artifact(progress, 100.0 * done / max(total, 1))

    row = extract_features(Path(research), query, m, feature_set, weights=weights, batch_size=batch_size,
                           patch_grids=patch_grids, pool=pool, device=device, on_progress=on_progress)
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


@flow(name="extract-features", log_prints=False)
def extract_features_flow(out: str | None = None, query: str = "SELECT slice_id FROM training_slices",
                          model: str = "mri-core", weights: str | None = None, arch: str | None = None,
                          image_size: int | None = None, feature_set: str | None = None, batch_size: int = 32,
                          patch_grids: bool = False, pool: str = "mean", pretrained: str | None = None) -> dict:
    """Embed ``query``'s slices (it returns slice_id) with zoo entry ``model`` loaded from the
    local ``weights`` ({home} expands to MRIFOUNDRY_HOME); write feature set ``feature_set``
    (default: the model name). ``pretrained=<model_id>`` takes a run of the ``pretrain`` flow
    from the catalog's ``models`` table instead (its latest teacher checkpoint and arch)."""
    research = _research(out)
    if pretrained:
        model, weights, arch = "mri-core", *pretrained_checkpoint(research, pretrained)
    name = feature_set or pretrained or model
    row = embed_task(str(research), query, model, _expand(weights), arch, image_size, name, batch_size,
                     patch_grids, pool)
    create_markdown_artifact(
        f"# Features `{name}`\n\n- model **{row['model']}** ({row['weights']}, sha256 {row['weights_sha256']})\n"
        f"- {row['n_slices']} slices at {row['image_size']}², dim {row['dim']}, pool {row['pool']}, "
        f"patch grids {'yes' if row['patch_grids'] else 'no'}\n\n"
        f"```sql\nSELECT * FROM features WHERE feature_set = '{name}'\n```",
        key="features-summary", description="feature extraction summary")
    return row
