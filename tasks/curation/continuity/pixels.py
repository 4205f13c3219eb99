"""Pixel-level continuity checks: decode every kept image (truncated or undecodable pixel
data, a blank series) and collapse duplicate copies of one image (same SOPInstanceUID, or the
same image under another UID: a classic and an enhanced copy of one acquisition).

Used by :func:`tasks.curation.continuity.checks.check_series` after the header checks.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Protocol, TypeVar

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from mrifoundry.tasks.curation import exam_reads
from pydicom.encaps import generate_frames

from mrifoundry.tasks.curation.continuity.screens import (
    FLOAT_PIXELS, Reject, check_format, header_floats, header_get, header_int, header_texts, header_time,
)

_JPEG_FAMILY = frozenset(pydicom.uid.JPEGTransferSyntaxes + pydicom.uid.JPEGLSTransferSyntaxes
                         + pydicom.uid.JPEG2000TransferSyntaxes)


class Instance(Protocol):
    """One image of a series: its file and its header."""
    path: Path
    ds: Dataset


T = TypeVar("T", bound=Instance)


def _expected_bytes(ds: Dataset) -> int:
    """Rows x Columns x SamplesPerPixel x BitsAllocated / 8 x frames (absent counts as 0, 1 or 1)."""
    frames = header_int(ds, "NumberOfFrames") or 1
    samples = header_int(ds, "SamplesPerPixel")
    return ((header_int(ds, "Rows") or 0) * (header_int(ds, "Columns") or 0) * (1 if samples is None else samples)
            * (header_int(ds, "BitsAllocated") or 0) // 8 * frames)


def _stream_truncated(ds: Dataset) -> bool:
    """Heuristic for an encapsulated stream cut short: a missing end marker or RLE segment."""
    n_frames = header_int(ds, "NumberOfFrames") or 1
    try:
        frames = list(generate_frames(ds.PixelData, number_of_frames=n_frames))
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


def remove_duplicate_copies(imgs: list[T], removed: list) -> list[T]:
    """Collapse copies of one image: first copies of one SOPInstanceUID
    (:func:`_remove_same_uid`), then copies under different UIDs (:func:`_remove_same_image`)."""
    return _remove_same_image(_remove_same_uid(imgs, removed), removed)


def _remove_same_uid(imgs: list[T], removed: list) -> list[T]:
    """Archives hold copies of one instance (a re-send, a partial transfer, another encoding).
    Copies whose pixels are equal collapse to one; a broken copy is removed with its own
    reason when a good copy remains. Good copies with different pixels stay, and the series is
    rejected (``duplicate_instance``): which one is right cannot be told."""
    by_uid: dict[str, list[T]] = {}
    for img in imgs:
        by_uid.setdefault(str(header_get(img.ds, "SOPInstanceUID", "")), []).append(img)
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
                good.append((img, read_pixels(img.path)))
            except Reject as rej:
                bad.append((img, rej.reason))
        if not good:
            continue
        if any(not _equal(arr, good[0][1]) for _, arr in good[1:]):
            continue
        drop.update(img.path for img, _ in good[1:])
        removed.extend((img.path, "duplicate_removed") for img, _ in good[1:])
        drop.update(img.path for img, _ in bad)
        removed.extend((img.path, reason) for img, reason in bad)
    return [img for img in imgs if img.path not in drop]


def _equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.array_equal(a, b))


def _seconds(hhmmss: str | None) -> float | None:
    """A TM value (colons already removed) as seconds of the day, rounded to 0.1 ms."""
    if hhmmss is None:
        return None
    h, m, s = int(hhmmss[:2]), int(hhmmss[2:4] or 0), float(hhmmss[4:] or 0)
    return round(3600 * h + 60 * m + s, 4)


def _rounded(values: tuple[float, ...] | None, digits: int) -> tuple[float, ...] | None:
    return None if values is None else tuple(round(v, digits) for v in values)


def image_key(ds: Dataset) -> tuple | None:
    """What makes two images the same image of an acquisition, whatever their UIDs: position and
    orientation (~1e-3 mm / 1e-4), acquisition time, echo, b-value, gradient, ASL
    label/control, and ImageType's ORIGINAL/DERIVED, PRIMARY/SECONDARY and LOCALIZER (a localizer
    or derived image is removed as such, never as a copy). None (never a copy of another image)
    when the position or orientation is absent, not finite, or any of these values cannot be read."""
    try:
        kind = [v.strip().upper() for v in header_texts(ds, "ImageType")]
        position = _rounded(header_floats(ds, "ImagePositionPatient", 3), 3)
        orientation = _rounded(header_floats(ds, "ImageOrientationPatient", 6), 4)
        if position is None or orientation is None or not all(map(math.isfinite, position + orientation)):
            return None
        seq = header_get(ds, "DiffusionGradientDirectionSequence")
        gradient = _rounded(header_floats(seq[0], "DiffusionGradientOrientation", 3), 4) if seq else None
        echo_time = _rounded(header_floats(ds, "EchoTime", 1), 4)
        # the echo time names the echo when present (enhanced frames carry no EchoNumbers)
        echo = ("te", echo_time) if echo_time is not None else ("n", _rounded(header_floats(ds, "EchoNumbers"), 0))
        # no TemporalPositionIdentifier here: a classic 3D export may number its one volume while
        # the frames of its enhanced copy carry none (frames.py keeps volume numbers only for 4D);
        # two numbers that differ still say "not a copy" (checked beside the pixels)
        return (position, orientation, _seconds(header_time(ds, "AcquisitionTime")), echo,
                _rounded(header_floats(ds, "DiffusionBValue", 1), 3), gradient,
                tuple(v.strip().upper() for v in header_texts(ds, "ASLContext")), tuple(kind[:2]),
                "LOCALIZER" in kind)
    except Exception:  # noqa: BLE001 - MalformedHeader, or a broken sequence item: no key, never collapsed
        return None


def _remove_same_image(imgs: list[T], removed: list) -> list[T]:
    """One image stored twice under different SOPInstanceUIDs (a classic series and its enhanced
    copy in one series; the enhanced frames get UIDs of their own at deid). Images with one
    :func:`image_key` and equal decoded pixels collapse to the first in the given order; the
    others go to ``removed`` (``duplicate_removed``). Equal keys with different pixels stay (the
    geometry checks decide). Pixels are decoded only for images whose key collides.

    Constant images (a zero slice outside the anatomy) are equal in every time point of a 4D
    series whose key tells no time points apart (no TemporalPositionIdentifier, one
    AcquisitionTime): they collapse only beside a collapsed non-constant image, the evidence
    that the series holds a second copy."""
    by_key: dict[tuple, list[T]] = {}
    for img in imgs:
        key = image_key(img.ds)
        if key is not None:
            by_key.setdefault(key, []).append(img)
    copies_found: list[tuple[T, bool]] = []   # (the later copy, its pixels are constant)
    for group in by_key.values():
        if len(group) < 2:
            continue
        kept: list[tuple[np.ndarray, int | None]] = []
        for img in group:
            try:
                check_format([img.ds])
                arr = read_pixels(img.path)
                tpi = header_int(img.ds, "TemporalPositionIdentifier")
            except Reject:   # unreadable: not collapsed here (the pixel check rejects it later)
                continue
            if any(_equal(arr, other) and (tpi is None or t is None or tpi == t) for other, t in kept):
                copies_found.append((img, arr.size == 0 or bool(arr.min() == arr.max())))
            else:
                kept.append((arr, tpi))
    if all(constant for _, constant in copies_found):
        return imgs
    removed.extend((img.path, "duplicate_removed") for img, _ in copies_found)
    drop = {img.path for img, _ in copies_found}
    return [img for img in imgs if img.path not in drop]


def read_pixels(path: Path) -> np.ndarray:
    """The decoded pixels of one file; truncated or undecodable data is a rejection."""
    try:
        ds = exam_reads.read(path)
    except Exception as e:  # noqa: BLE001 - headers read fine before: the file ends inside PixelData
        raise Reject("truncated_file", "a file ends inside its pixel data") from e
    if any(k in ds for k in FLOAT_PIXELS):
        raise Reject("unsupported_pixel_format", "float pixel data (FloatPixelData/DoubleFloatPixelData)")
    if "PixelData" not in ds or not ds.PixelData:
        # deid writes a file cut inside its pixel data header-only: the two look alike here;
        # a file cut right after the PixelData header reads as an empty value
        raise Reject("truncated_file", "an image has no PixelData")
    compressed = ds.file_meta.TransferSyntaxUID.is_compressed
    if not compressed and len(ds.PixelData) < _expected_bytes(ds):
        raise Reject("truncated_file", "PixelData shorter than Rows x Columns x BitsAllocated requires")
    # before decoding: some decoders (JPEG-LS) return a partial image from a cut stream
    if compressed and _stream_truncated(ds):
        raise Reject("truncated_file", "the compressed pixel stream is cut short")
    try:
        return ds.pixel_array
    except Exception as e:  # noqa: BLE001 - decoders raise many types
        raise Reject("undecodable_pixels", f"pixel data could not be decoded ({type(e).__name__})") from e


def check_pixels(paths: list[Path]) -> None:
    """Truncated/undecodable pixel data, then a blank (constant) series."""
    lo, hi = math.inf, -math.inf
    for path in paths:
        arr = read_pixels(path)
        lo, hi = min(lo, float(arr.min())), max(hi, float(arr.max()))
    if lo == hi:
        raise Reject("blank_series", "every pixel of every image has the same value")
