"""Fréchet Radiomic Distance (FRDv1) between image sets, with a per-image feature cache.

Features and the distance come from frd-score (``frd_score.frd``), with pyradiomics-bhklab
installed as the ``radiomics`` module; this module adds sampling, caching and parallelism only:

* per-image features are frd-score's own ``process_image_mask_pair`` output for its FRDv1 2D
  extractor (``get_feature_extractor("v1", image_dim=2)``: Original + Wavelet bands, LoG is
  skipped by pyradiomics on 2D, 13 numeric diagnostics kept: 398 values);
* no masks: frd-score's default for v1, the whole image with the corner pixel set to 0 (a
  pyradiomics workaround), is used;
* the post-processing follows frd-score's ``calculate_feature_statistics`` for v1 with its
  defaults (drop images with a NaN feature, float32, z-score against the reference set only
  via its ``z_score_normalize``, drop columns NaN/Inf in either set), then its
  ``calculate_frechet_distance`` and ``log(d²)``. With the same files in the same order the
  value equals ``frd_score.compute_frd([ref, other])`` and the ``frd-score`` command.

The cache is ``<cache_dir>/features.parquet``, one row per (sha256 of the file bytes,
config_id); ``config_id`` hashes the extractor settings and the frd-score, pyradiomics,
SimpleITK and PyWavelets versions, so a change of any of them recomputes. It stores raw
per-image vectors, never normalised ones, because normalisation depends on the reference set.

FRD depends on the number of images per side (it falls with n even for the same
distribution), so compare datasets only at one n: draw every set with ``sample_images``
using the same ``n`` and ``seed``, and keep the pretraining set as the reference so every
value shares one normalisation.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import multiprocessing as mp
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mrifoundry.catalog.store import write_parquet_atomic
from mrifoundry.digest import file_sha256
from mrifoundry.tasks.data.slices import DEFAULT_QUERY as SLICES_QUERY
from mrifoundry.tasks.data.slices import query_slices
from mrifoundry.tasks.ingest.labelled2d import load_labelled

log = logging.getLogger(__name__)

CACHE_FILE = "features.parquet"
MASK_POLICY = "frd-score-v1-default: whole image, corner pixel 0"
_SCHEMA = pa.schema([
    ("sha256", pa.string()),
    ("config_id", pa.string()),
    # null: frd-score skipped the image (mask with <= 1 voxel)
    ("feature_names", pa.list_(pa.string())),
    ("values", pa.list_(pa.float64())),
    ("source_path", pa.string()),  # where it was first seen; informational only
])

_EXTRACTOR = None  # per process: building it parses the YAML config


def _frd():
    # frd_score.frd imports cv2 (seconds): import it only when FRD is used
    from frd_score import frd as frd_mod
    return frd_mod


def _extractor():
    global _EXTRACTOR
    if _EXTRACTOR is None:
        import radiomics
        # frd-score's non-verbose mode: pyradiomics logs every skipped filter otherwise
        logging.getLogger("radiomics").setLevel(logging.ERROR)
        radiomics.setVerbosity(60)
        _EXTRACTOR = _frd().get_feature_extractor(frd_version="v1", image_dim=2)
    return _EXTRACTOR


def config_id() -> str:
    """Hash of everything that determines a per-image feature vector."""
    import importlib.metadata as md

    ex = _extractor()
    cfg = {
        "frd_version": "v1",
        "mask": MASK_POLICY,
        "settings": ex.settings,
        "image_types": ex.enabledImagetypes,
        "features": ex.enabledFeatures,
        "versions": {p: md.version(p) for p in ("frd-score", "pyradiomics-bhklab", "SimpleITK", "PyWavelets")},
    }
    blob = json.dumps(cfg, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def sample_images(paths: Iterable[str | Path], n: int, seed: int = 0) -> list[str]:
    """``n`` distinct paths drawn with ``seed``, in sorted order (independent of input order).

    FRD depends on n, so draw the same n from every dataset (and the reference).

    Raises:
        ValueError: fewer than ``n`` distinct paths.
    """
    pool = sorted({str(p) for p in paths})
    if n < 2:
        raise ValueError(f"n={n}: FRD needs at least 2 images per side")
    if len(pool) < n:
        raise ValueError(f"n={n} but only {len(pool)} images: use the same, smaller n for every dataset")
    idx = np.random.default_rng(seed).choice(len(pool), size=n, replace=False)
    return [pool[i] for i in sorted(idx)]


def _extract_one(path: str) -> tuple[list[str], list[float]] | None:
    try:
        res = _frd().process_image_mask_pair((path, None), feature_extractor=_extractor(), frd_version="v1")
    except Exception as e:  # the pool's traceback would not name the file
        raise RuntimeError(f"{path}: FRD feature extraction failed ({type(e).__name__}: {e}); "
                           "pyradiomics cannot bin a constant image: leave blank slices out") from e
    if res is None:
        return None
    names = list(res[1].keys())
    return names, [float(v) for v in res[0]]


def _preload() -> None:
    _extractor()


@contextlib.contextmanager
def _locked(cache_dir: Path):
    # several FRD runs may share a cache: serialise the read-merge-write
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / ".features.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_cache(path: Path, cid: str, hashes: set[str]) -> dict[str, tuple | None]:
    if not path.exists() or not hashes:
        return {}
    tbl = pq.read_table(path, filters=[("config_id", "=", cid), ("sha256", "in", sorted(hashes))])
    out = {}
    for h, names, vals in zip(tbl["sha256"].to_pylist(), tbl["feature_names"].to_pylist(), tbl["values"].to_pylist()):
        out[h] = None if vals is None else (names, vals)
    return out


def _append_cache(path: Path, rows: list[dict]) -> None:
    new = pa.Table.from_pylist(rows, schema=_SCHEMA)
    if path.exists():
        old = pq.read_table(path).cast(_SCHEMA)
        keys = set(zip(new["sha256"].to_pylist(), new["config_id"].to_pylist()))
        keep = [k not in keys for k in zip(old["sha256"].to_pylist(), old["config_id"].to_pylist())]
        new = pa.concat_tables([old.filter(pa.array(keep, pa.bool_())), new])
    write_parquet_atomic(new, path)


def extract_features(paths: Sequence[str | Path], *, cache_dir: str | Path, workers: int = 2) -> dict:
    """Per-image FRDv1 feature vectors for ``paths``, from the cache or computed in parallel.

    Returns ``{"features": [(names, values) | None per path], "hits", "misses", "seconds"}``;
    None marks an image frd-score skips. Misses are extracted in a process pool of ``workers``
    (forkserver, so a threaded caller such as a Prefect task is not forked; a calling script
    needs the ``if __name__ == "__main__"`` guard) and written back to the cache.
    """
    t0 = time.perf_counter()
    cache_dir = Path(cache_dir)
    cache = cache_dir / CACHE_FILE
    paths = [str(p) for p in paths]
    hashes = [file_sha256(p) for p in paths]
    cid = config_id()
    with _locked(cache_dir):
        found = _read_cache(cache, cid, set(hashes))
    todo: dict[str, str] = {}  # hash -> first path with it
    for h, p in zip(hashes, paths):
        if h not in found:
            todo.setdefault(h, p)
    hits = sum(h in found for h in hashes)
    if todo:
        items = list(todo.items())
        n_proc = max(1, min(int(workers), len(items)))
        if n_proc == 1:
            results = [_extract_one(p) for _, p in items]
        else:
            ctx = mp.get_context("forkserver")
            # workers fork from a server that already imported frd-score and pyradiomics
            ctx.set_forkserver_preload(["frd_score.frd", "radiomics.featureextractor", "mrifoundry.tasks.evaluation.frd"])
            with ProcessPoolExecutor(n_proc, mp_context=ctx, initializer=_preload) as pool:
                results = list(pool.map(_extract_one, [p for _, p in items]))
        rows = []
        for (h, p), res in zip(items, results):
            found[h] = res
            rows.append({"sha256": h, "config_id": cid, "feature_names": None if res is None else res[0],
                         "values": None if res is None else res[1], "source_path": p})
        with _locked(cache_dir):
            _append_cache(cache, rows)
    return {"features": [found[h] for h in hashes], "hits": hits, "misses": len(paths) - hits,
            "seconds": time.perf_counter() - t0}


def _as_array(feats: list, side: str) -> tuple[np.ndarray, list[str], int]:
    kept = [f for f in feats if f is not None]
    if not kept:
        raise RuntimeError(f"{side}: no features could be extracted from any image")
    names = kept[0][0]
    if any(f[0] != names for f in kept):
        raise RuntimeError(f"{side}: feature vectors differ in their names (mixed 2D/3D images?)")
    return np.asarray([f[1] for f in kept]), names, len(feats) - len(kept)


def frechet_from_features(ref: np.ndarray, other: np.ndarray, names: list[str]) -> dict:
    """frd-score's v1 statistics and distance on raw feature matrices (rows = images).

    Returns ``{"frd": log(d²) or -inf, "d2", "n_features", "dropped_rows"}``.
    """
    frd_mod = _frd()
    sets, dropped = [], []
    for feats in (ref, other):
        nan_rows = np.isnan(feats).any(axis=1)
        dropped.append(int(nan_rows.sum()))
        sets.append(feats[~nan_rows].astype(np.float32))
    with warnings.catch_warnings():
        # constant or infinite reference features give inf/nan here by design: frd-score
        # drops those columns just below
        warnings.simplefilter("ignore", RuntimeWarning)
        normed = [frd_mod.z_score_normalize(s, new_min=0.0, new_max=1.0, feature_names=names,
                                            base_distribution=sets[0], replace_nan=False,
                                            handle_std_zero=False) for s in sets]
    bad = np.zeros(normed[0].shape[1], dtype=bool)
    for nf in normed:
        bad |= np.isnan(nf).any(axis=0) | np.isinf(nf).any(axis=0)
    normed = [nf[:, ~bad] for nf in normed]
    mu = [np.mean(nf, axis=0) for nf in normed]
    sigma = [np.cov(nf, rowvar=False) for nf in normed]
    d2 = float(frd_mod.calculate_frechet_distance(mu[0], sigma[0], mu[1], sigma[1]))
    value = float(np.log(d2)) if d2 > 0 else float("-inf")
    return {"frd": value, "d2": d2, "n_features": int((~bad).sum()), "dropped_rows": dropped}


def frd(reference_paths: Sequence[str | Path], other_paths: Sequence[str | Path], *,
        cache_dir: str | Path, workers: int = 2) -> dict:
    """FRDv1 of ``other_paths`` against ``reference_paths`` (dataset 1: the pretraining set).

    2D images only (PNG etc.). Order matters only at float rounding: pass the order that a
    comparison run should see (``sample_images`` returns sorted paths, as frd-score sorts a
    folder). Returns ``frd`` (log d², frd-score's v1 default), ``d2``, ``n_reference``,
    ``n_other`` (images used), ``n_features`` (after dropping NaN/Inf columns),
    ``n_features_extracted``, ``skipped`` (images frd-score skips or drops per side),
    ``cache_hits``, ``cache_misses``, ``config_id``, ``seconds`` (extract, distance, total).
    """
    t0 = time.perf_counter()
    ref_paths, oth_paths = list(reference_paths), list(other_paths)
    if not ref_paths or not oth_paths:
        raise ValueError("both sides need images")
    ext = extract_features(ref_paths + oth_paths, cache_dir=cache_dir, workers=workers)
    feats = ext["features"]
    ref, names, ref_skip = _as_array(feats[:len(ref_paths)], "reference")
    oth, names2, oth_skip = _as_array(feats[len(ref_paths):], "other")
    if names2 != names:
        raise RuntimeError("reference and other feature vectors differ in their names")
    t1 = time.perf_counter()
    dist = frechet_from_features(ref, oth, names)
    t2 = time.perf_counter()
    return {
        "frd": dist["frd"],
        "d2": dist["d2"],
        "n_reference": ref.shape[0] - dist["dropped_rows"][0],
        "n_other": oth.shape[0] - dist["dropped_rows"][1],
        "n_features": dist["n_features"],
        "n_features_extracted": len(names),
        "skipped": {"reference": ref_skip + dist["dropped_rows"][0], "other": oth_skip + dist["dropped_rows"][1]},
        "cache_hits": ext["hits"],
        "cache_misses": ext["misses"],
        "config_id": config_id(),
        "seconds": {"extract": ext["seconds"], "distance": t2 - t1, "total": t2 - t0},
    }


def pretraining_images(research: str | Path, sql: str = SLICES_QUERY) -> list[str]:
    """Absolute PNG paths of the curated slices a query selects (by slice_id or png_file; the FRD reference)."""
    return [r["png_file"] for r in query_slices(Path(research), sql)]


def labelled_images(research: str | Path, dataset_id: str, split: str | None = None) -> list[str]:
    """Absolute image PNG paths of a labelled dataset (optionally one split)."""
    return [r["image_file"] for r in load_labelled(Path(research), dataset_id, split)]


__all__ = ["CACHE_FILE", "MASK_POLICY", "config_id", "extract_features", "frd", "frechet_from_features",
           "labelled_images", "pretraining_images", "sample_images"]
