"""Flow ``extract-features``: embed the slices of a catalog query with a zoo model.

Wiring only (tasks/evaluation/embedding.py). The features land in the catalog (views ``features``,
``feature_sets``) for probing and FRD.
"""
from __future__ import annotations

import torch
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, update_progress_artifact

from mrifoundry.flows.params import expand_home, research_dir
from mrifoundry.tasks.evaluation.embedding import extract_features
from mrifoundry.tasks.pretraining.pretrained import pretrained_run


#: Default query per input kind: every training slice, or every converted volume.
DEFAULT_QUERIES = {"slice": "SELECT slice_id FROM training_slices",
                   "volume": "SELECT series_id FROM series WHERE nifti_path IS NOT NULL"}


@task(name="embed")
def embed_task(research: str, query: str | None, model: str, weights: str | None, arch: str | None,
               image_size: int | None, feature_set: str, batch_size: int, patch_grids: bool, pool: str) -> dict:
    from pathlib import Path

    from mrifoundry.models import zoo
    logger = get_run_logger()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    m = zoo.load(model, weights, arch=arch, image_size=image_size, device=device)
    unit = "volume" if getattr(m, "family", None) == "volume" else "slice"
    query = query or DEFAULT_QUERIES[unit]
    progress = create_progress_artifact(0.0, description=f"extract-features {feature_set}: {unit}s")

    def on_progress(done: int, total: int, rate: float) -> None:
        logger.info("embedded %d/%d %ss (%.1f %ss/s)", done, total, unit, rate, unit)
        update_progress_artifact(progress, 100.0 * done / max(total, 1))

    row = extract_features(Path(research), query, m, feature_set, weights=weights, batch_size=batch_size,
                           patch_grids=patch_grids, pool=pool, device=device, on_progress=on_progress)
    return {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}


@flow(name="extract-features", log_prints=False)
def extract_features_flow(out: str | None = None, query: str | None = None,
                          model: str = "mri-core", weights: str | None = None, arch: str | None = None,
                          image_size: int | None = None, feature_set: str | None = None, batch_size: int = 32,
                          patch_grids: bool = False, pool: str = "mean", pretrained: str | None = None) -> dict:
    """Embed ``query``'s slices (it returns slice_id) with zoo entry ``model`` loaded from the
    local ``weights`` ({home} expands to MRIFOUNDRY_HOME) — or, for a volume encoder
    (triad-unet, triad-swin, brainsegfounder, prism), the NIfTI volumes of the series it
    returns (series_id); default query in ``DEFAULT_QUERIES``. Writes feature set
    ``feature_set`` (default: the model name). ``pretrained=<model_id>`` takes a run of the
    ``pretrain`` flow from the catalog's ``models`` table instead (its latest checkpoint and
    arch, loaded through the zoo entry of its method)."""
    research = research_dir(out)
    if pretrained:
        run = pretrained_run(research, pretrained)
        model, weights, arch = run.entry, run.checkpoint, run.arch
    name = feature_set or pretrained or model
    row = embed_task(str(research), query, model, expand_home(weights), arch, image_size, name, batch_size,
                     patch_grids, pool)
    table, side = ("volume_features", "³") if row["unit"] == "volume" else ("features", "²")
    create_markdown_artifact(
        f"# Features `{name}`\n\n- model **{row['model']}** ({row['weights']}, sha256 {row['weights_sha256']})\n"
        f"- {row['n_slices']} {row['unit']}s at {row['image_size']}{side}, dim {row['dim']}, pool {row['pool']}, "
        f"patch grids {'yes' if row['patch_grids'] else 'no'}\n\n"
        f"```sql\nSELECT * FROM {table} WHERE feature_set = '{name}'\n```",
        key="features-summary", description="feature extraction summary")
    return row
