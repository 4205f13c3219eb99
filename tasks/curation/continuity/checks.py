"""Continuity checks: does a de-identified series form one (or, 4D, several) clean volume(s)?

``check_series`` reads headers only for the geometric checks, then decodes the pixels
of the kept images. Each planted defect maps to exactly one reason code of
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
from tasks.curation.continuity import series_meta
from tasks.curation.deid.frames import image_type
from tasks.curation.continuity.screens import FLOAT_PIXELS, check_format
from tasks.curation.continuity.screens import Reject as _Reject
from tasks.curation.continuity.screens import ipp as _ipp
from tasks.curation.continuity.screens import spacing as _spacing
from tasks.curation.continuity.screens import valid_position as _valid_position

LOCALIZER_MAX_IMAGES = 3  # as dicom2nifti: an orientation group of < 4 images may be a localizer
ORTHOGONAL_COS = math.cos(math.radians(45.0))  # minority normal this far off the majority's = localizer-like
_LOCALIZER_WORDS = ("LOCALIZER", "LOCALISER", "SCOUT", "SURVEY", "3-PLANE", "3 PLANE", "TRI-PLANE", "AAHSCOUT")
_DIFFUSION_MAP_TOKENS = frozenset({"ADC", "EADC", "TRACEW", "TRACE", "DIFFUSION"})
_JPEG_FAMILY = frozenset(pydicom.uid.JPEGTransferSyntaxes + pydicom.uid.JPEGLSTransferSyntaxes
                         + pydicom.uid.JPEG2000TransferSyntaxes)
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
        ``status="ok"`` with >= 1 :class:`Volume`, or ``"rejected"`` with a reason code.
        ``removed`` lists instance-level removals either way.

    Raises:
        CurationError: reason ``continuity_error`` on an unexpected error (retried on re-run).
    """
    result = SeriesCheck(series_id, "ok", None, "", [], [], {})
    try:
        _check(list(files), cfg, result)
    except _Reject as rej:
        result.status, result.reason, result.message, result.volumes = "rejected", rej.reason, rej.message, []
    except Exception as e:  # noqa: BLE001 - anything else is a bug or bad input: ledger 'failed'
        raise CurationError(series_id, "continuity_error", f"{type(e).__name__} while checking the series") from e
    return result


def _check(files: list[Path], cfg: ContinuityConfig, result: SeriesCheck) -> None:
    if not files:
        raise _Reject("too_few_slices", "the series has no images")
    imgs = [_Img(p, pydicom.dcmread(p, stop_before_pixels=True)) for p in files]
    result.meta = series_meta.derive_meta(imgs[0].ds)
    if any(str(i.ds.get("Modality", "")).upper() != "MR" for i in imgs):
        raise _Reject("non_mr_modality", "Modality is not MR")
    imgs = _remove_duplicate_copies(imgs, result.removed)
    check_format([i.ds for i in imgs])
    imgs = _remove_flagged(imgs, cfg, result.removed)
    imgs = _remove_orientation_localizers(imgs, cfg, result.removed)
    _check_geometry(imgs)
    normal = _normal(imgs[0].ds)
    for img in imgs:
        img.proj = float(np.dot(normal, _ipp(img.ds)))
    groups = _split_temporal(imgs, cfg)
    if len({len(g) for g in groups}) > 1:
        raise _Reject("incomplete_4d", f"{len(groups)} time points with different slice counts")
    volumes, steps = [], []
    for t, group in enumerate(groups):
        group.sort(key=lambda i: i.proj)
        steps.append(_check_positions([i.proj for i in group], cfg))
        _check_tilt(group, normal)
        volumes.append(Volume(t, [i.path for i in group], [i.proj for i in group]))
    _check_pixels([p for v in volumes for p in v.files])
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
    if all(_is_localizer(i.ds) for i in imgs):
        raise _Reject("localizer_series", "every image is a localizer (ImageType)")
    kept = []
    for img in imgs:
        if _is_localizer(img.ds):
            removed.append((img.path, "localizer_removed"))
        else:
            kept.append(img)
    if all(_is_derived(i.ds) for i in kept):
        if cfg.keep_diffusion_maps and all(_is_diffusion_map(i.ds) for i in kept):
            return kept
        raise _Reject("derived_series", "every image is DERIVED/SECONDARY (ImageType)")
    out = []
    for img in kept:
        if _is_derived(img.ds):
            removed.append((img.path, "derived_removed"))
        else:
            out.append(img)
    return out


def _normal(ds: Dataset) -> np.ndarray:
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    n = np.cross(iop[:3], iop[3:])
    return n / np.linalg.norm(n)


def _orientation_groups(imgs: list[_Img], tol: float) -> list[list[_Img]]:
    groups: list[tuple[np.ndarray, list[_Img]]] = []
    for img in imgs:
        if "ImageOrientationPatient" not in img.ds or "ImagePositionPatient" not in img.ds:
            raise _Reject("missing_geometry", "an image lacks ImageOrientationPatient/ImagePositionPatient")
        if not _valid_position(img.ds):
            raise _Reject("missing_geometry", "ImagePositionPatient/ImageOrientationPatient non-finite or degenerate")
        iop = np.array([float(v) for v in img.ds.ImageOrientationPatient])
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
        raise _Reject("localizer_series", "only small orthogonal image groups (a multi-plane localizer)")
    majority = groups[0]
    if len(majority) < cfg.min_slices:
        raise _Reject("mixed_orientation", f"{len(groups)} orientations, none with enough slices")
    for group, normal in zip(groups[1:], normals[1:]):
        if len(group) > LOCALIZER_MAX_IMAGES or abs(float(np.dot(normal, normals[0]))) >= ORTHOGONAL_COS:
            raise _Reject("mixed_orientation", f"{len(groups)} orientations in one series")
    for group in groups[1:]:
        removed.extend((i.path, "localizer_removed") for i in group)
    return majority


def _check_geometry(imgs: list[_Img]) -> None:
    spacings = [_spacing(i.ds) for i in imgs]
    if None in spacings:
        raise _Reject("missing_geometry", "PixelSpacing missing, non-finite or not positive")
    keys = {(i.ds.get("Rows"), i.ds.get("Columns"), tuple(round(v, 4) for v in sp)) for i, sp in zip(imgs, spacings)}
    if len(keys) > 1 or None in next(iter(keys)):
        raise _Reject("inconsistent_geometry", "Rows, Columns or PixelSpacing differ or are missing")


def _check_tilt(group: list[_Img], normal: np.ndarray) -> None:
    """The stack must advance along the slice normal; a sheared stack (gantry tilt) does not."""
    d = _ipp(group[-1].ds) - _ipp(group[0].ds)
    length = float(np.linalg.norm(d))
    if length > 0 and min(np.abs(d / length - normal).max(), np.abs(d / length + normal).max()) > TILT_TOLERANCE:
        raise _Reject("gantry_tilt", "slice positions are not along the slice normal (gantry tilt)")


def _same(a: float, b: float, cfg: ContinuityConfig) -> bool:
    return abs(a - b) <= cfg.position_tolerance_mm


def _split_temporal(imgs: list[_Img], cfg: ContinuityConfig) -> list[list[_Img]]:
    """Groups of one time point each (a single group for 3D).

    TemporalPositionIdentifier is trusted when it varies; else AcquisitionTime or
    TriggerTime when they split the series into groups of >= 2 images with unique
    positions; else the k-th occurrence of a position in InstanceNumber order is time
    point k (works for time-major and slice-major numbering alike).
    """
    projs = sorted(i.proj for i in imgs)
    if all(not _same(a, b, cfg) for a, b in zip(projs, projs[1:])):
        return [imgs]
    tpi = [i.ds.get("TemporalPositionIdentifier") for i in imgs]
    if None not in tpi and len(set(tpi)) > 1:
        return _group_by(imgs, [int(v) for v in tpi])
    for keyword in ("EchoNumbers", "AcquisitionTime", "TriggerTime"):
        values = [i.ds.get(keyword) for i in imgs]
        if None in values or "" in values or len(set(map(str, values))) < 2:
            continue
        sortable = [_sortable(keyword, v) for v in values]
        if None in sortable:
            continue
        groups = _group_by(imgs, sortable)
        if all(len(g) >= 2 and _unique_positions(g, cfg) for g in groups):
            return groups
    return _split_by_occurrence(imgs, cfg)


def _sortable(keyword: str, value):
    """Echo numbers and trigger times sort as numbers, acquisition times as text (HHMMSS.ffffff)."""
    if keyword == "AcquisitionTime":
        return str(value)
    try:
        return float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)
    except (TypeError, ValueError, IndexError):
        return None


def _group_by(imgs: list[_Img], keys: list) -> list[list[_Img]]:
    groups: dict = {}
    for img, k in zip(imgs, keys):
        groups.setdefault(k, []).append(img)
    return [groups[k] for k in sorted(groups)]


def _unique_positions(group: list[_Img], cfg: ContinuityConfig) -> bool:
    projs = sorted(i.proj for i in group)
    return all(not _same(a, b, cfg) for a, b in zip(projs, projs[1:]))


def _split_by_occurrence(imgs: list[_Img], cfg: ContinuityConfig) -> list[list[_Img]]:
    ordered = sorted(imgs, key=lambda i: int(i.ds.get("InstanceNumber") or 0))
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
        raise _Reject("duplicate_position", "every image is at one slice position (zero slice spacing)")
    repeated = sum(1 for c in counts if c > 1)
    if 2 * repeated < len(counts):
        # most positions occur once: a 3D series with duplicated slices, not 4D
        raise _Reject("duplicate_position", f"{repeated} slice position(s) occur more than once")
    return groups


def _check_positions(projs: list[float], cfg: ContinuityConfig) -> float:
    """Slice count, duplicates and spacing of one sorted time point; returns the step (mm)."""
    if len(projs) < cfg.min_slices:
        raise _Reject("too_few_slices", f"{len(projs)} slices < min_slices {cfg.min_slices}")
    diffs = np.diff(np.asarray(projs))
    if np.any(diffs <= cfg.position_tolerance_mm):
        raise _Reject("duplicate_position", f"{int(np.sum(diffs <= cfg.position_tolerance_mm))} repeated slice position(s)")
    step = float(np.median(diffs))
    tol = cfg.position_tolerance_mm + 0.05 * step
    irregular = diffs[np.abs(diffs - step) > tol]
    if irregular.size == 0:
        return step
    multiples = np.rint(irregular / step)
    if np.all(multiples >= 2) and np.all(np.abs(irregular - multiples * step) <= tol * multiples):
        raise _Reject("missing_slice", f"{int(np.sum(multiples - 1))} slice(s) missing in {irregular.size} gap(s)")
    raise _Reject("non_uniform_spacing", f"{irregular.size} of {diffs.size} slice steps deviate from the median step")


def _expected_bytes(ds: Dataset) -> int:
    frames = int(ds.get("NumberOfFrames") or 1)
    return int(ds.Rows) * int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8 * frames


def _stream_truncated(ds: Dataset) -> bool:
    """Heuristic for an encapsulated stream cut short: a missing end marker or RLE segment."""
    from pydicom.encaps import generate_frames

    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=int(ds.get("NumberOfFrames") or 1)))
    except Exception:  # noqa: BLE001 - the encapsulation itself is broken off
        return True
    if not frames:
        return True
    last, syntax = frames[-1], ds.file_meta.TransferSyntaxUID
    if syntax == pydicom.uid.RLELossless:
        if len(last) < 64:
            return True
        header = np.frombuffer(last[:64], dtype="<u4")
        return bool(header[0] and int(header[1:1 + int(header[0])].max()) >= len(last))
    if syntax in _JPEG_FAMILY:
        return not last.rstrip(b"\x00").endswith(b"\xff\xd9")  # JPEG/JPEG-LS EOI, JPEG 2000 EOC
    return False  # other codecs: no cheap end marker to test


def _remove_duplicate_copies(imgs: list[_Img], removed: list) -> list[_Img]:
    """Archives hold copies of one instance (a re-send, a partial transfer, another encoding).
    Copies whose pixels are equal collapse to one; a broken copy is removed with its own
    reason when a good copy remains. Good copies with different pixels stay, and the series is
    rejected (``duplicate_instance``): which one is right cannot be told."""
    by_uid: dict[str, list[_Img]] = {}
    for img in imgs:
        by_uid.setdefault(str(img.ds.get("SOPInstanceUID", "")), []).append(img)
    if all(len(copies) == 1 for uid, copies in by_uid.items() if uid):
        return imgs
    drop: set[Path] = set()
    for uid, copies in by_uid.items():
        if len(copies) < 2 or not uid:
            continue
        good, bad = [], []
        for img in copies:
            try:
                check_format([img.ds])
                good.append((img, _read_pixels(img.path)))
            except _Reject as rej:
                bad.append((img, rej.reason))
        if not good:
            continue
        if any(arr.shape != good[0][1].shape or not np.array_equal(arr, good[0][1]) for _, arr in good[1:]):
            continue
        drop.update(img.path for img, _ in good[1:])
        removed.extend((img.path, "duplicate_removed") for img, _ in good[1:])
        drop.update(img.path for img, _ in bad)
        removed.extend((img.path, reason) for img, reason in bad)
    return [img for img in imgs if img.path not in drop]


def _read_pixels(path: Path) -> np.ndarray:
    """The decoded pixels of one file; truncated or undecodable data is a rejection."""
    try:
        ds = pydicom.dcmread(path)
    except Exception as e:  # noqa: BLE001 - headers read fine before: the file ends inside PixelData
        raise _Reject("truncated_file", "a file ends inside its pixel data") from e
    if any(k in ds for k in FLOAT_PIXELS):
        raise _Reject("unsupported_pixel_format", "float pixel data (FloatPixelData/DoubleFloatPixelData)")
    if "PixelData" not in ds:
        # deid writes a file cut inside its pixel data header-only: the two look alike here
        raise _Reject("truncated_file", "an image has no PixelData")
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed
    if not compressed and len(ds.PixelData) < _expected_bytes(ds):
        raise _Reject("truncated_file", "PixelData shorter than Rows x Columns x BitsAllocated requires")
    # before decoding: some decoders (JPEG-LS) return a partial image from a cut stream
    if compressed and _stream_truncated(ds):
        raise _Reject("truncated_file", "the compressed pixel stream is cut short")
    try:
        return ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoders raise many types
        raise _Reject("undecodable_pixels", f"pixel data could not be decoded ({type(e).__name__})") from e


def _check_pixels(paths: list[Path]) -> None:
    """Truncated/undecodable pixel data, then a blank (constant) series."""
    lo, hi = math.inf, -math.inf
    for path in paths:
        arr = _read_pixels(path)
        lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
    if lo == hi:
        raise _Reject("blank_series", "every pixel of every image has the same value")
