"""Embed catalog slices (or, with a volume encoder, NIfTI volumes) with a zoo model; write
features registered in the catalog.

Output of one feature set (replaced as a whole when re-extracted):
``OUT/research/features/<set>/features.parquet`` (one pooled vector per slice, table
``features``) and, with ``patch_grids``, ``grids_<k>.npy`` shards of [n, D, h, w] float16
patch grids (``features.grid_path``/``grid_index`` say where a slice's grid is) — or, for a
volume encoder, ``volume_features.parquet`` (one vector per series, table
``volume_features``; tasks/evaluation/volume_embed.py). A row in ``feature_sets`` records model,
weights hash, query, unit and size.
"""
from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from mrifoundry.catalog.schema import FEATURE_SETS, FEATURES, VOLUME_FEATURES, to_arrow
from mrifoundry.atomic import replace_dir
from mrifoundry.catalog.store import derived_lock, features_file, upsert, write_parquet_atomic
from mrifoundry.catalog.views import build_research_db, connect
from mrifoundry import code_version
from mrifoundry.digest import file_sha256
from mrifoundry.tasks.data.slices import load_slice, query_slices
from mrifoundry.tasks.evaluation.volume_embed import embed_volumes


def weights_digest(path: str | Path | None) -> str:
    """The first 16 hex digits of the weight file's SHA-256 (``random``: no file)."""
    return file_sha256(path)[:16] if path else "random"


def _rows_by_key(research: Path, sql: str, key: str, table: str, columns: tuple[str, ...], what: str,
                 where: str = "") -> list[dict]:
    """DISTINCT ``key`` values of ``sql`` joined to ``table``: dicts of ``columns``, by key."""
    con = connect(research)
    try:
        cols = [d[0] for d in con.execute(f"SELECT * FROM ({sql}) LIMIT 0").description]
        if key not in cols:
            raise ValueError(f"the feature query {what} must return a {key} column")
        rows = con.execute(
            f"SELECT {', '.join('t.' + c for c in columns)} FROM (SELECT DISTINCT {key} FROM ({sql})) q "
            f"JOIN {table} t USING ({key}) {where} ORDER BY t.{key}").fetchall()
    finally:
        con.close()
    return [dict(zip(columns, r)) for r in rows]


def query_slice_rows(research: Path, sql: str) -> list[dict]:
    """The distinct catalog slices of ``sql`` (named by slice_id or png_file;
    ``tasks.data.slices.query_slices``), ordered by slice_id."""
    rows = query_slices(research, sql)
    if any(r["slice_id"] is None for r in rows):
        raise ValueError("the feature query of a slice model must name catalog slices (slice_id, or the png_file "
                         "of a slice in the slices table)")
    return sorted({r["slice_id"]: r for r in rows}.values(), key=lambda r: r["slice_id"])


def query_volume_rows(research: Path, sql: str) -> list[dict]:
    """Rows of ``sql`` joined to the series table: series_id, exam_id, nifti_file.

    The query must return ``series_id``; series without a NIfTI are left out.
    """
    return _rows_by_key(research, sql, "series_id", "series", ("series_id", "exam_id", "nifti_file"),
                        "of a volume encoder", "WHERE t.nifti_file IS NOT NULL")


def load_batch(paths: list[str], size: int) -> torch.Tensor:
    """PNGs → [B, 1, size, size] in [0, 1]: slice-wise min-max, bilinear (antialiased) resize
    so slices of any matrix stack; the zoo model applies its own normalisation."""
    return torch.stack([F.interpolate(load_slice(p)[None], size=(size, size), mode="bilinear",
                                      antialias=True, align_corners=False)[0] for p in paths]).clamp(0, 1)


@torch.inference_mode()
def embed_batches(model, paths: list[str], batch_size: int, *, device: str = "cpu", pool: str = "mean"):
    """Yield (pooled [b, D] float32 array, patch grid [b, D, h, w] tensor) per batch of PNG
    ``paths``: the one way slices are embedded (feature sets, probing). ``pool``: ``mean``
    of the grid or ``cls`` (DINOv2 family)."""
    for start in range(0, len(paths), batch_size):
        x = load_batch(paths[start:start + batch_size], model.image_size).to(device)
        grid = model.embed(x)                     # [B, D, h, w]
        vec = grid.mean(dim=(2, 3)) if pool == "mean" else model.pooled(x, pool=pool)
        yield vec.float().cpu().numpy(), grid


def embed_pooled(model, paths: list[str], batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """[n, D] mean-pooled features of PNG ``paths``."""
    out = [vec for vec, _ in embed_batches(model, paths, batch_size, device=device)]
    return np.concatenate(out) if out else np.zeros((0, model.embed_dim), np.float32)


def extract_features(research: Path, sql: str, model, feature_set: str, *, weights: str | Path | None = None,
                     batch_size: int = 32, patch_grids: bool = False, pool: str = "mean", shard_size: int = 1024,
                     device: str = "cpu", on_progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Embed the slices of ``sql`` (it returns slice_id) with ``model`` (a ``models.zoo.ZooModel``),
    or, for a volume encoder (family ``volume``), the NIfTI volumes of the series ``sql``
    returns (series_id; see :func:`extract_volume_features`).

    Pooling ``mean`` averages the patch grid; ``cls`` takes the cls token (DINOv2-family
    models only). Returns the ``feature_sets`` row.
    """
    if not feature_set.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"feature set name {feature_set!r}: letters, digits, - and _ only")
    if getattr(model, "family", None) == "volume":
        if patch_grids or pool != "mean":
            raise ValueError("a volume encoder gives one multi-scale pooled vector per volume: "
                             "no patch grids, no cls pooling")
        return extract_volume_features(research, sql, model, feature_set, weights=weights,
                                       batch_size=min(batch_size, 2), device=device, on_progress=on_progress)
    rows = query_slice_rows(research, sql)
    work, final_dir = _work_dir(research, feature_set)
    model.encoder.to(device).eval()
    out_rows, shard, shard_k, dim = [], [], 0, None
    t0 = time.perf_counter()

    def flush_shard():
        nonlocal shard, shard_k
        if shard:
            np.save(work / f"grids_{shard_k:05d}.npy", np.concatenate(shard).astype(np.float16))
            shard, shard_k = [], shard_k + 1

    try:
        batches = embed_batches(model, [r["png_file"] for r in rows], batch_size, device=device, pool=pool)
        for start, (vec, grid) in zip(range(0, len(rows), batch_size), batches):
            batch = rows[start:start + batch_size]
            dim = vec.shape[1]
            for i, r in enumerate(batch):
                rec = {"feature_set": feature_set, "slice_id": r["slice_id"], "series_id": r["series_id"],
                       "exam_id": r["exam_id"], "embedding": vec[i].tolist(), "grid_path": None, "grid_index": None}
                if patch_grids:
                    rec["grid_path"] = f"features/{feature_set}/grids_{shard_k:05d}.npy"
                    rec["grid_index"] = sum(len(a) for a in shard) + i
                out_rows.append(rec)
            if patch_grids:
                shard.append(grid.float().cpu().numpy())
                if sum(len(a) for a in shard) >= shard_size:
                    flush_shard()
            if on_progress:
                done = min(start + batch_size, len(rows))
                on_progress(done, len(rows), done / max(time.perf_counter() - t0, 1e-9))
        flush_shard()
        row = _publish(research, work, final_dir, FEATURES, out_rows, feature_set=feature_set, model=model.name,
                       weights=weights, query=sql, image_size=int(model.image_size),
                       dim=int(dim or model.embed_dim), pool=pool, unit="slice", patch_grids=patch_grids)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


def _work_dir(research: Path, feature_set: str) -> tuple[Path, Path]:
    final_dir = features_file(research, feature_set).parent
    work = final_dir.with_name(f".{feature_set}.tmp{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return work, final_dir


def _publish(research: Path, work: Path, final_dir: Path, table, out_rows: list[dict], *, feature_set: str,
             model: str, weights: str | Path | None, **fields) -> dict:
    """Write ``out_rows`` as ``table``'s file of the set, swap the set in, upsert and return
    its ``feature_sets`` row (``fields``: the columns that depend on the kind)."""
    tbl = to_arrow(table, out_rows) if out_rows else table.schema.empty_table()
    write_parquet_atomic(tbl, work / f"{table.name}.parquet")
    row = {"feature_set": feature_set, "model": model, "weights": Path(weights).name if weights else "random",
           "weights_sha256": weights_digest(weights), "n_slices": len(out_rows), **fields,
           "created_at": dt.datetime.now(dt.timezone.utc), "code_version": code_version()}
    with derived_lock(research):
        replace_dir(work, final_dir)  # the whole set: readers see the old one or the new one
        upsert(research, FEATURE_SETS, [row])
        build_research_db(research)
    return row


def extract_volume_features(research: Path, sql: str, model, feature_set: str, *, weights: str | Path | None = None,
                            batch_size: int = 2, device: str = "cpu",
                            on_progress: Callable[[int, int, float], None] | None = None) -> dict:
    """Embed the NIfTI of each series ``sql`` returns (series_id) with a volume encoder: one
    multi-scale pooled vector per volume (``tasks.evaluation.volume_embed``), table ``volume_features``.
    Returns the ``feature_sets`` row."""
    rows = query_volume_rows(research, sql)
    work, final_dir = _work_dir(research, feature_set)
    try:
        model.encoder.to(device).eval()
        X = embed_volumes(model, [r["nifti_file"] for r in rows], batch_size=batch_size, on_progress=on_progress)
        out_rows = [{"feature_set": feature_set, "series_id": r["series_id"], "exam_id": r["exam_id"],
                     "embedding": X[i].tolist()} for i, r in enumerate(rows)]
        row = _publish(research, work, final_dir, VOLUME_FEATURES, out_rows, feature_set=feature_set,
                       model=model.name, weights=weights, query=sql, image_size=int(model.roi),
                       dim=int(model.embed_dim), pool="multiscale", unit="volume", patch_grids=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return row


def load_features(research: Path, feature_set: str) -> tuple[list[str], np.ndarray]:
    """(ids, [n, D] float32 matrix) of a feature set — slice_ids, or series_ids for a volume
    set — for probing and FRD."""
    import pyarrow.parquet as pq
    path, key = features_file(research, feature_set), "slice_id"
    if not path.exists() and features_file(research, feature_set, "volume").exists():
        path, key = features_file(research, feature_set, "volume"), "series_id"
    tbl = pq.read_table(path, columns=[key, "embedding"])
    emb = tbl.column("embedding").combine_chunks()
    flat = np.asarray(emb.flatten(), dtype=np.float32)
    n = len(tbl)
    return tbl.column(key).to_pylist(), flat.reshape(n, -1) if n else flat.reshape(0, 0)


__all__ = ["extract_features", "extract_volume_features", "load_features", "query_slice_rows", "query_volume_rows",
           "weights_digest", "load_batch"]
