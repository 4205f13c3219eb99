"""Continuity checks: does a de-identified series form one (or, 4D, several) clean volume(s)?

``check_series`` reads headers only for the geometric checks, then decodes the pixels
of the kept images (:mod:`tasks.curation.continuity.pixels`). Each planted defect maps to exactly one reason code of
:mod:`catalog.reasons`; the order of the checks (documented in ``docs/conversion.md``)
is what makes that so. Messages name tags and counts, never header values.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from mrifoundry.errors import CurationError
from mrifoundry.tasks.curation import exam_reads
from mrifoundry.tasks.curation.continuity import series_meta
from mrifoundry.tasks.curation.deid.frames import image_type
from mrifoundry.tasks.curation.continuity.pixels import check_pixels, remove_duplicate_copies
from mrifoundry.tasks.curation.continuity.screens import (
    MalformedHeader, Reject, check_format, header_floats, header_get, header_int, header_texts, header_time,
    header_values, ipp, spacing, valid_position,
)
from mrifoundry.tasks.curation.continuity.screens import iop as iop_of

LOCALIZER_MAX_IMAGES = 3  # as dicom2nifti: an orientation group of < 4 images may be a localizer
ORTHOGONAL_COS = math.cos(math.radians(45.0))  # minority normal this far off the majority's = localizer-like
_LOCALIZER_WORDS = ("LOCALIZER", "LOCALISER", "SCOUT", "SURVEY", "3-PLANE", "3 PLANE", "TRI-PLANE", "AAHSCOUT")
_DIFFUSION_MAP_TOKENS = frozenset({"ADC", "EADC", "TRACEW", "TRACE", "DIFFUSION"})
_REFORMAT_TOKENS = frozenset({"MPR", "MIP", "MNIP", "CPR", "REFORMATTED", "PROJECTION IMAGE", "SUBTRACT", "SUB"})
TILT_TOLERANCE = 0.03   # stack direction vs slice normal (unit vectors); dicom2nifti rejects above ~0.05


@dataclass(frozen=True)
class ContinuityConfig:
    min_slices: int = 5
    position_tolerance_mm: float = 0.1    # + 5 % relative, as dicom2nifti
    orientation_tolerance: float = 1e-3
    keep_diffusion_maps: bool = True      # whole-series DERIVED\PRIMARY ADC/TRACE maps are kept


@dataclass
class Volume:
    temporal_index: int          # 0 for 3D
    files: list[Path]            # sorted along the slice normal (ascending projection)
    positions: list[float]       # projection of ImagePositionPatient on the normal, mm


@dataclass
class SeriesCheck:
    series_id: str
    status: str                  # "ok" | "rejected"
    reason: str | None
    message: str
    volumes: list[Volume] = field(default_factory=list)
    removed: list[tuple[Path, str]] = field(default_factory=list)
    meta: dict = field(default_factory=dict)


@dataclass
class _Img:
    path: Path
    ds: Dataset
    proj: float = 0.0


def check_series(series_id: str, files: list[Path], cfg: ContinuityConfig = ContinuityConfig()) -> SeriesCheck:
    """Check one series; split 4D into time points.

    Args:
        series_id: opaque id (used in messages and errors only).
        files: the series' de-identified DICOM files, any order.
        cfg: thresholds.

    Returns:
        ``status="ok"`` with >= 1 :class:`Volume`, or ``"rejected"`` with a reason code
        (``malformed_header`` when a value the volume needs cannot be read as its type; the
        message names the attribute). ``removed`` lists instance-level removals either way.

    Raises:
        CurationError: reason ``continuity_error`` on an unexpected error (retried on re-run).
    """
    result = SeriesCheck(series_id, "ok", None, "", [], [], {})
    try:
        _check(list(files), cfg, result)
    except Reject as rej:
        result.status, result.reason, result.message, result.volumes = "rejected", rej.reason, rej.message, []
    except Exception as e:  # noqa: BLE001 - anything else is a bug or bad input: ledger 'failed'
        raise CurationError(series_id, "continuity_error", f"{type(e).__name__} while checking the series") from e
    return result


def _check(files: list[Path], cfg: ContinuityConfig, result: SeriesCheck) -> None:
    if not files:
        raise Reject("too_few_slices", "the series has no images")
    imgs = [_Img(p, exam_reads.read(p, stop_before_pixels=True)) for p in files]
    result.meta = series_meta.derive_meta(imgs[0].ds)
    if any(str(header_get(i.ds, "Modality", "")).upper() != "MR" for i in imgs):
        raise Reject("non_mr_modality", "Modality is not MR")
    imgs = remove_duplicate_copies(imgs, result.removed)
    check_format([i.ds for i in imgs])
    imgs = _remove_flagged(imgs, cfg, result.removed)
    imgs = _remove_orientation_localizers(imgs, cfg, result.removed)
    _check_geometry(imgs)
    normal = _normal(imgs[0].ds)
    for img in imgs:
        img.proj = float(np.dot(normal, ipp(img.ds)))
    groups = _split_temporal(imgs, cfg)
    if len({len(g) for g in groups}) > 1:
        raise Reject("incomplete_4d", f"{len(groups)} time points with different slice counts")
    volumes, steps = [], []
    for t, group in enumerate(groups):
        group.sort(key=lambda i: i.proj)
        steps.append(_check_positions([i.proj for i in group], cfg))
        _check_tilt(group, normal)
        volumes.append(Volume(t, [i.path for i in group], [i.proj for i in group]))
    check_pixels([p for v in volumes for p in v.files])
    ref = groups[len(groups) // 2][len(groups[0]) // 2].ds
    result.meta = series_meta.derive_meta(ref, n_slices=len(groups[0]), n_timepoints=len(groups),
                                          slice_spacing=round(float(np.median(steps)), 4))
    result.volumes = volumes
    result.message = f"{len(volumes)} volume(s) of {len(groups[0])} slices"


def _is_localizer(ds: Dataset) -> bool:
    return "LOCALIZER" in image_type(ds)


def _is_derived(ds: Dataset) -> bool:
    tokens = image_type(ds)
    return bool(tokens) and (tokens[0] == "DERIVED" or (len(tokens) > 1 and tokens[1] == "SECONDARY"))


def _is_diffusion_map(ds: Dataset) -> bool:
    """DERIVED\\PRIMARY ADC/TRACE: computed in the acquired plane, a real contrast (not a reformat)."""
    tokens = image_type(ds)
    return (len(tokens) > 1 and tokens[1] == "PRIMARY" and bool(_DIFFUSION_MAP_TOKENS & set(tokens))
            and not _REFORMAT_TOKENS & set(tokens))


def _remove_flagged(imgs: list[_Img], cfg: ContinuityConfig, removed: list) -> list[_Img]:
    """Whole-series and instance-level localizers and derived images, by ImageType."""
    for img in imgs:
        header_texts(img.ds, "ImageType")   # a number or bytes under a wrong VR: malformed_header
    if all(_is_localizer(i.ds) for i in imgs):
        raise Reject("localizer_series", "every image is a localizer (ImageType)")
    kept = _split_off(imgs, _is_localizer, "localizer_removed", removed)
    if all(_is_derived(i.ds) for i in kept):
        if cfg.keep_diffusion_maps and all(_is_diffusion_map(i.ds) for i in kept):
            return kept
        raise Reject("derived_series", "every image is DERIVED/SECONDARY (ImageType)")
    return _split_off(kept, _is_derived, "derived_removed", removed)


def _split_off(imgs: list[_Img], flagged, reason: str, removed: list) -> list[_Img]:
    """The images not ``flagged``; the flagged ones go to ``removed`` with ``reason``."""
    removed.extend((i.path, reason) for i in imgs if flagged(i.ds))
    return [i for i in imgs if not flagged(i.ds)]


def _normal(ds: Dataset) -> np.ndarray:
    iop = iop_of(ds)
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def _orientation_groups(imgs: list[_Img], tol: float) -> list[list[_Img]]:
    groups: list[tuple[np.ndarray, list[_Img]]] = []
    for img in imgs:
        if "ImageOrientationPatient" not in img.ds or "ImagePositionPatient" not in img.ds:
            raise Reject("missing_geometry", "an image lacks ImageOrientationPatient/ImagePositionPatient")
        if not valid_position(img.ds):
            raise Reject("missing_geometry", "ImagePositionPatient/ImageOrientationPatient non-finite or degenerate")
        iop = iop_of(img.ds)
        for ref, members in groups:
            if np.max(np.abs(ref - iop)) <= tol:
                members.append(img)
                break
        else:
            groups.append((iop, [img]))
    return sorted((m for _, m in groups), key=len, reverse=True)


def _remove_orientation_localizers(imgs: list[_Img], cfg: ContinuityConfig, removed: list) -> list[_Img]:
    """Drop small orthogonal orientation groups (localizers) next to a real majority."""
    groups = _orientation_groups(imgs, cfg.orientation_tolerance)
    if len(groups) == 1:
        return imgs
    normals = [_normal(g[0].ds) for g in groups]
    pairwise_orthogonal = all(abs(float(np.dot(normals[a], normals[b]))) < ORTHOGONAL_COS
                              for a in range(len(groups)) for b in range(a + 1, len(groups)))
    if all(len(g) <= LOCALIZER_MAX_IMAGES for g in groups) and pairwise_orthogonal:
        raise Reject("localizer_series", "only small orthogonal image groups (a multi-plane localizer)")
    majority = groups[0]
    if len(majority) < cfg.min_slices:
        raise Reject("mixed_orientation", f"{len(groups)} orientations, none with enough slices")
    for group, normal in zip(groups[1:], normals[1:]):
        if len(group) > LOCALIZER_MAX_IMAGES or abs(float(np.dot(normal, normals[0]))) >= ORTHOGONAL_COS:
            raise Reject("mixed_orientation", f"{len(groups)} orientations in one series")
    for group in groups[1:]:
        removed.extend((i.path, "localizer_removed") for i in group)
    return majority


def _check_geometry(imgs: list[_Img]) -> None:
    spacings = [spacing(i.ds) for i in imgs]
    if None in spacings:
        raise Reject("missing_geometry", "PixelSpacing missing, non-finite or not positive")
    keys = {(header_int(i.ds, "Rows"), header_int(i.ds, "Columns"), tuple(round(v, 4) for v in sp))
            for i, sp in zip(imgs, spacings)}
    if len(keys) > 1 or None in next(iter(keys)):
        raise Reject("inconsistent_geometry", "Rows, Columns or PixelSpacing differ or are missing")


def _check_tilt(group: list[_Img], normal: np.ndarray) -> None:
    """The stack must advance along the slice normal; a sheared stack (gantry tilt) does not."""
    d = ipp(group[-1].ds) - ipp(group[0].ds)
    length = float(np.linalg.norm(d))
    if length > 0 and min(np.abs(d / length - normal).max(), np.abs(d / length + normal).max()) > TILT_TOLERANCE:
        raise Reject("gantry_tilt", "slice positions are not along the slice normal (gantry tilt)")


def _same(a: float, b: float, cfg: ContinuityConfig) -> bool:
    return abs(a - b) <= cfg.position_tolerance_mm


def _split_temporal(imgs: list[_Img], cfg: ContinuityConfig) -> list[list[_Img]]:
    """Groups of one time point each (a single group for 3D); ASL label and control images
    (``ASLContext``, made public at de-identification) are time points of their own.

    TemporalPositionIdentifier is trusted when it varies; else EchoNumbers, AcquisitionTime or
    TriggerTime when they split the series into groups of >= 2 images with unique positions
    that each cover the slab (all positions, one missing at most: multiband shots do not);
    else the k-th occurrence of a position in InstanceNumber order is time point k (works for
    time-major and slice-major numbering alike).
    """
    contexts = [str(header_get(i.ds, "ASLContext", "") or "").strip().upper() for i in imgs]
    if len(set(contexts)) > 1:
        return _split_asl(imgs, contexts, cfg)
    return _split_temporal_plain(imgs, cfg)


def _split_temporal_plain(imgs: list[_Img], cfg: ContinuityConfig) -> list[list[_Img]]:
    projs = sorted(i.proj for i in imgs)
    if all(not _same(a, b, cfg) for a, b in zip(projs, projs[1:])):
        return [imgs]
    tpi = [header_int(i.ds, "TemporalPositionIdentifier") for i in imgs]
    if None not in tpi and len(set(tpi)) > 1:
        return _group_by(imgs, tpi)
    for keyword in ("EchoNumbers", "AcquisitionTime", "TriggerTime"):
        values = [header_values(i.ds, keyword) for i in imgs]
        if None in values or len(set(map(str, values))) < 2:
            continue
        # present on every image and varying: this key would group the series, so a value
        # that is not a number (a time) is malformed_header rather than a silent fallback
        groups = _group_by(imgs, [_sortable(keyword, i.ds) for i in imgs])
        # a time point covers the slab: with simultaneous multi-slice (multiband) the slices
        # excited together share one AcquisitionTime, so a "group" of MB slices is a shot, not a
        # volume; then the k-th occurrence of each position (InstanceNumber order) is the volume
        n_pos = _n_positions(projs, cfg)
        if all(len(g) >= 2 and _unique_positions(g, cfg) and len(g) >= n_pos - 1 for g in groups):
            return groups
    return _split_by_occurrence(imgs, cfg)


def _split_asl(imgs: list[_Img], contexts: list[str], cfg: ContinuityConfig) -> list[list[_Img]]:
    """ASL: label and control images of one time point lie at the same positions. Each context's
    images are split into repeats on their own; the volumes are then put in acquisition order
    (repeat, then the first InstanceNumber of each volume), keeping the label/control pairs as
    time points as dcm2niix does (the sidecar's aslcontext records which is which)."""
    keyed = []
    for context in dict.fromkeys(contexts):
        members = [i for i, c in zip(imgs, contexts) if c == context]
        for repeat, group in enumerate(_split_temporal_plain(members, cfg)):
            first = min(header_int(i.ds, "InstanceNumber") or 0 for i in group)
            keyed.append(((repeat, first), group))
    return [g for _, g in sorted(keyed, key=lambda kg: kg[0])]


def _n_positions(sorted_projs: list[float], cfg: ContinuityConfig) -> int:
    """Distinct slice positions of the series (projections along the normal, sorted)."""
    return 1 + sum(not _same(a, b, cfg) for a, b in zip(sorted_projs, sorted_projs[1:]))


def _sortable(keyword: str, ds: Dataset):
    """Echo numbers and trigger times sort as numbers (the first of several echo numbers),
    acquisition times as text (HHMMSS.ffffff). Raises MalformedHeader."""
    value = header_time(ds, keyword) if keyword == "AcquisitionTime" else header_floats(ds, keyword)
    if value is None:   # blank on some images only: cannot order them
        raise MalformedHeader(keyword, "blank on some images")
    return value if keyword == "AcquisitionTime" else value[0]


def _group_by(imgs: list[_Img], keys: list) -> list[list[_Img]]:
    groups: dict = {}
    for img, k in zip(imgs, keys):
        groups.setdefault(k, []).append(img)
    return [groups[k] for k in sorted(groups)]


def _unique_positions(group: list[_Img], cfg: ContinuityConfig) -> bool:
    projs = sorted(i.proj for i in group)
    return all(not _same(a, b, cfg) for a, b in zip(projs, projs[1:]))


def _split_by_occurrence(imgs: list[_Img], cfg: ContinuityConfig) -> list[list[_Img]]:
    ordered = sorted(imgs, key=lambda i: header_int(i.ds, "InstanceNumber") or 0)
    centers: list[float] = []
    counts: list[int] = []
    groups: list[list[_Img]] = []
    for img in ordered:
        idx = next((n for n, c in enumerate(centers) if _same(c, img.proj, cfg)), None)
        if idx is None:
            centers.append(img.proj)
            counts.append(0)
            idx = len(centers) - 1
        t = counts[idx]
        counts[idx] += 1
        while len(groups) <= t:
            groups.append([])
        groups[t].append(img)
    if len(centers) == 1:
        raise Reject("duplicate_position", "every image is at one slice position (zero slice spacing)")
    repeated = sum(1 for c in counts if c > 1)
    if 2 * repeated < len(counts):
        # most positions occur once: a 3D series with duplicated slices, not 4D
        raise Reject("duplicate_position", f"{repeated} slice position(s) occur more than once")
    return groups


def _check_positions(projs: list[float], cfg: ContinuityConfig) -> float:
    """Slice count, duplicates and spacing of one sorted time point; returns the step (mm)."""
    if len(projs) < cfg.min_slices:
        raise Reject("too_few_slices", f"{len(projs)} slices < min_slices {cfg.min_slices}")
    diffs = np.diff(np.asarray(projs))
    if np.any(diffs <= cfg.position_tolerance_mm):
        raise Reject("duplicate_position", f"{int(np.sum(diffs <= cfg.position_tolerance_mm))} repeated slice position(s)")
    step = float(np.median(diffs))
    tol = cfg.position_tolerance_mm + 0.05 * step
    irregular = diffs[np.abs(diffs - step) > tol]
    if irregular.size == 0:
        return step
    multiples = np.rint(irregular / step)
    if np.all(multiples >= 2) and np.all(np.abs(irregular - multiples * step) <= tol * multiples):
        raise Reject("missing_slice", f"{int(np.sum(multiples - 1))} slice(s) missing in {irregular.size} gap(s)")
    raise Reject("non_uniform_spacing", f"{irregular.size} of {diffs.size} slice steps deviate from the median step")
