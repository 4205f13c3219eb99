"""One parse of each de-identified file per exam: the datasets de-identification wrote are handed
to the continuity and convert stages of the same exam instead of being read back from disk.

:func:`curate_exam` runs an exam's stages in one thread inside :func:`exam_scope`; de-identification
:func:`keep` s each dataset it saved, and the later stages :func:`read` through the scope. A kept
dataset is the very object that was written: every element and its VR equal a re-read of the file,
and so do its decoded pixels (checked over the 3,173 files of the sample archive, docs/scale-out.md).
The entry is keyed by the file's inode and checked against its size and mtime on every read, so
the renames that publish a series keep it, and a file replaced since is read from disk. Outside a
scope (a stage run alone, a re-run that skips de-identification) every read is ``dcmread``.

Readers share the object: continuity and the PNG writer only read it (pydicom caches the decoded
pixels on it, so they are decoded once); the NIfTI converter changes it in place, so convert
:func:`forget` s a series' files once it is done with them.
"""
from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset

#: The budget is ``MRIFOUNDRY_EXAM_READS_MB`` (default 256): pixel bytes one exam keeps, per worker
#: thread (the stored value and the decoded array readers cache on it); beyond it files are read
#: from disk again. One 512²×60 series is ≈ 63 MB of this.
_HEADER_BYTES = 16_384   # what a header costs in memory, roughly
_local = threading.local()


def _decoded_bytes(ds: Dataset) -> int:
    """The size of the pixel array a reader will decode and pydicom cache on ``ds`` (a compressed
    value decodes to more than it stores)."""
    try:
        return (int(ds.get("Rows", 0) or 0) * int(ds.get("Columns", 0) or 0) * int(ds.get("SamplesPerPixel", 1) or 1)
                * max(int(ds.get("BitsAllocated", 8) or 8) // 8, 1) * max(int(ds.get("NumberOfFrames", 1) or 1), 1))
    except (TypeError, ValueError):
        return 0


class ExamReads:
    """The datasets kept for one exam, by (device, inode) of the file they were written to."""

    def __init__(self, limit_bytes: int):
        self.limit, self.used = limit_bytes, 0
        self.hits = 0
        self._kept: dict[tuple[int, int], tuple[Dataset, tuple[int, int], int]] = {}

    def keep(self, path: Path | str, ds: Dataset) -> bool:
        cost = _HEADER_BYTES + len(ds.get("PixelData", None) or b"") + _decoded_bytes(ds)
        if self.used + cost > self.limit:
            return False
        st = os.stat(path)
        self._kept[(st.st_dev, st.st_ino)] = (ds, (st.st_size, st.st_mtime_ns), cost)
        self.used += cost
        return True

    def get(self, path: Path | str) -> Dataset | None:
        try:
            st = os.stat(path)
        except OSError:
            return None
        got = self._kept.get((st.st_dev, st.st_ino))
        if got is None:
            return None
        if got[1] != (st.st_size, st.st_mtime_ns):   # the file was rewritten: its dataset is stale
            self._drop((st.st_dev, st.st_ino))
            return None
        self.hits += 1
        return got[0]

    def forget(self, paths: Iterable[Path | str]) -> None:
        for path in paths:
            try:
                st = os.stat(path)
            except OSError:
                continue
            self._drop((st.st_dev, st.st_ino))

    def _drop(self, key: tuple[int, int]) -> None:
        got = self._kept.pop(key, None)
        if got is not None:
            self.used -= got[2]


@contextmanager
def exam_scope(limit_mb: float | None = None) -> Iterator[ExamReads]:
    """The stages of one exam, in this thread, share what de-identification wrote (up to
    ``limit_mb``, default the ``exam_reads_mb`` setting)."""
    if limit_mb is None:
        from mrifoundry.settings import Settings
        limit_mb = Settings().exam_reads_mb
    previous = getattr(_local, "reads", None)
    _local.reads = ExamReads(int(limit_mb * 2**20))
    try:
        yield _local.reads
    finally:
        _local.reads = previous


def keep(path: Path | str, ds: Dataset) -> None:
    """After ``ds.save_as(path)``: hand ``ds`` to this exam's later stages (no-op outside a scope)."""
    reads = getattr(_local, "reads", None)
    if reads is not None:
        reads.keep(path, ds)


def read(path: Path | str, stop_before_pixels: bool = False) -> Dataset:
    """The dataset of a de-identified file: the kept one when this exam wrote it, else ``dcmread``
    (a kept dataset has its pixels even when ``stop_before_pixels`` is asked)."""
    reads = getattr(_local, "reads", None)
    ds = reads.get(path) if reads is not None else None
    return ds if ds is not None else pydicom.dcmread(path, stop_before_pixels=stop_before_pixels)


def forget(paths: Iterable[Path | str]) -> None:
    """Drop the kept datasets of ``paths`` (a reader changed them in place, or is done)."""
    reads = getattr(_local, "reads", None)
    if reads is not None:
        reads.forget(paths)
