"""Training volumes from the catalog: a SQL query → RAS 1 mm NIfTI → normalised 3D crops.

The volume recipes (Triad, BrainSegFounder, PRISM) train on ``roi³`` crops of the curated
NIfTI volumes. Every random choice (crop corner, flips, the partner series of PRISM) comes
from ``(seed, epoch, index)`` alone, so a run is the same with any number of loader workers
and a resumed run draws what an uninterrupted one would.

Intensities: robust min-max, the 0.5–99.5 percentiles of the whole volume → [0, 1], clipped
(Triad's ``_robust_minmax_foreground``; MONAI ``ScaleIntensityRangePercentiles``). A volume
smaller than ``roi`` is zero-padded (symmetric, as MONAI ``SpatialPad``). With a
``cache_dir`` the scaled volumes are kept as float16 and read by crop (tasks/data/volume_cache.py).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from mrifoundry.catalog.views import query_dicts
from mrifoundry.tasks.data.volume_cache import VolumeCache
from mrifoundry.tasks.data.volume_io import load_volume

__all__ = ["DEFAULT_QUERY", "PAIRED_QUERY", "VolumeDataset", "body_part_classes", "crop_box", "load_volume", "meta_vector",
           "query_volumes", "select_pairs"]

DEFAULT_QUERY = ("SELECT series_id, exam_id, nifti_file, sequence_type, orientation, body_part, field_strength, "
                 "repetition_time, echo_time, flip_angle, manufacturer, contrast FROM training_volumes WHERE true")
# PRISM: series of exams with at least two converted series (pairs of sequences)
PAIRED_QUERY = (DEFAULT_QUERY + " AND exam_id IN (SELECT exam_id FROM training_volumes "
                "GROUP BY exam_id HAVING COUNT(*) >= 2)")


def query_volumes(research: Path, sql: str) -> list[dict]:
    """Rows of ``sql`` on the research catalog; it must return ``nifti_file`` (absolute, a
    view column) and ``series_id``. Ordered by series_id so a run depends only on its seed."""
    cols, rows = query_dicts(research, sql)
    missing = {"nifti_file", "series_id"} - set(cols)
    if missing:
        raise ValueError(f"the volume query must return {sorted(missing)} (e.g. {DEFAULT_QUERY})")
    rows = [r for r in rows if r["nifti_file"]]
    rows.sort(key=lambda r: r["series_id"])
    return rows


def meta_vector(row: dict) -> np.ndarray:
    """(log TR ms, log TE ms, flip / 90°) with NaN for unknown values (PRISM's metadata targets)."""
    def log_or_nan(v):
        return math.log(float(v)) if v is not None and np.isfinite(float(v)) and float(v) > 0 else math.nan
    flip = row.get("flip_angle")
    return np.array([log_or_nan(row.get("repetition_time")), log_or_nan(row.get("echo_time")),
                     float(flip) / 90.0 if flip is not None and np.isfinite(float(flip)) else math.nan],
                    dtype=np.float32)


def body_part_classes(rows: list[dict]) -> list[str]:
    """Sorted distinct lower-case body parts of ``rows`` (PRISM's classification targets)."""
    return sorted({str(r["body_part"]).lower() for r in rows if r.get("body_part")})


def select_pairs(rows: list[dict]) -> list[list[int]]:
    """For each row, the indices of the other series of its exam (PRISM pairs two sequences
    of one exam). Rows of single-series exams get an empty list."""
    by_exam: dict[str, list[int]] = {}
    for i, r in enumerate(rows):
        by_exam.setdefault(r["exam_id"], []).append(i)
    return [[j for j in by_exam[r["exam_id"]] if j != i] for i, r in enumerate(rows)]


def crop_box(shape: tuple[int, ...], roi: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """(start, pad_before) per axis: a random ``roi``-sized window of a volume symmetrically
    zero-padded up to ``roi`` where it is smaller."""
    starts, pads = [], []
    for n in shape:
        pad = max(roi - n, 0) // 2
        padded = max(n, roi)
        starts.append(int(rng.integers(0, padded - roi + 1)))
        pads.append(pad)
    return starts, pads


def _crop(data: np.ndarray, roi: int, starts: list[int], pads: list[int]) -> np.ndarray:
    """The ``roi³`` window at ``starts`` of ``data`` zero-padded by ``pads`` before each axis
    (crop_box's geometry), float32. Reads only the window: ``data`` may be memory-mapped."""
    out = np.zeros((roi,) * 3, np.float32)
    src, dst = [], []
    for n, start, pad in zip(data.shape, starts, pads):
        first = start - pad                       # source index of the window's voxel 0
        lo, hi = max(first, 0), min(first + roi, n)
        src.append(slice(lo, hi))
        dst.append(slice(lo - first, hi - first))
    out[tuple(dst)] = data[tuple(src)]
    return out


def _crop_affine(affine: np.ndarray, starts: list[int], pads: list[int]) -> np.ndarray:
    """World ← voxel affine of the crop: its voxel 0 is source voxel ``start − pad``."""
    shift = np.eye(4)
    shift[:3, 3] = np.array(starts) - np.array(pads)
    return affine @ shift


def _resample_to(data: np.ndarray, src_affine: np.ndarray, shape: tuple[int, int, int],
                 affine: np.ndarray) -> np.ndarray:
    """Another series of the exam on the crop's voxel grid (world coordinates: same scanner
    frame of reference; no intensity registration), trilinear, 0 outside its field of view."""
    from nibabel.processing import resample_from_to
    # only the source box the crop's grid maps into (+1 voxel for the interpolation), so a
    # memory-mapped volume is read and converted there, not whole; an affine maps a box's
    # corners to the extremes of its image
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape], indexing="ij")).reshape(3, -1)
    vox = (np.linalg.inv(src_affine) @ affine @ np.vstack([corners, np.ones(corners.shape[1])]))[:3]
    lo = np.clip(np.floor(vox.min(axis=1)).astype(int) - 1, 0, data.shape)
    hi = np.clip(np.ceil(vox.max(axis=1)).astype(int) + 2, 0, data.shape)
    if np.any(hi <= lo):                          # the crop lies outside this series
        return np.zeros(shape, np.float32)
    box = np.asarray(data[tuple(slice(a, b) for a, b in zip(lo, hi))], dtype=np.float32)
    box_affine = src_affine.copy()
    box_affine[:3, 3] = src_affine[:3, :3] @ lo + src_affine[:3, 3]
    out = resample_from_to(nib.Nifti1Image(box, box_affine), (shape, affine), order=1, mode="constant", cval=0.0)
    return np.asarray(out.dataobj, dtype=np.float32)


@dataclass
class VolumeDataset(torch.utils.data.Dataset):
    """Index → one training sample (dict of tensors) for the volume recipes.

    Keys: ``image`` [1, roi, roi, roi]; with ``texts``: ``text`` [D]; with ``pairs``
    (PRISM): ``image2`` (a random other series of the exam on the same crop grid), ``meta``,
    ``meta2`` [3] and ``body_part`` (index in ``body_parts``, −1 unknown). Call
    :meth:`set_epoch` each epoch: the random draws are a function of (seed, epoch, index).
    """

    rows: list[dict]
    roi: int
    seed: int = 0
    flip_prob: float = 0.2
    texts: np.ndarray | None = None
    pairs: list[list[int]] | None = None
    body_parts: list[str] | None = None
    epoch: int = 0
    cache_dir: str | None = None     # tasks/data/volume_cache.py; None reads every NIfTI each draw

    def __len__(self) -> int:
        return len(self.rows)

    def _load(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        if self.cache_dir is None:
            return load_volume(path)
        if getattr(self, "_cache", None) is None:    # per process: loader workers build their own
            self._cache = VolumeCache(self.cache_dir)
        return self._cache.load(path)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, self.epoch, i])
        row = self.rows[i]
        data, affine = self._load(row["nifti_file"])
        starts, pads = crop_box(data.shape, self.roi, rng)
        flips = [ax for ax in range(3) if rng.random() < self.flip_prob]
        crop = _crop(data, self.roi, starts, pads)
        out = {"image": crop}
        if self.texts is not None:
            out["text"] = torch.from_numpy(np.asarray(self.texts[i], dtype=np.float32))
        if self.pairs is not None:
            partners = self.pairs[i]
            if not partners:
                raise ValueError(f"series {row['series_id']} has no other series in its exam to pair with")
            j = partners[int(rng.integers(len(partners)))]
            out["image2"] = _resample_to(*self._load(self.rows[j]["nifti_file"]), crop.shape,
                                         _crop_affine(affine, starts, pads))
            out["meta"] = torch.from_numpy(meta_vector(row))
            out["meta2"] = torch.from_numpy(meta_vector(self.rows[j]))
            part = str(row.get("body_part") or "").lower()
            classes = self.body_parts or []
            out["body_part"] = torch.tensor(classes.index(part) if part in classes else -1, dtype=torch.long)
        for key in ("image", "image2"):
            if key in out:
                vol = np.flip(out[key], axis=flips) if flips else out[key]
                out[key] = torch.from_numpy(np.ascontiguousarray(vol, dtype=np.float32))[None]
        return out
