"""One read of each DICOM file of a series for both writers of the convert stage.

The PNG writer reads every slice; the NIfTI converter then needs the slices of one time point
again. :class:`SharedReads` keeps the datasets of those files (pixels decoded once, cached by
pydicom on the dataset) from the first reader for the second, which takes them (freed after).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

import pydicom

from mrifoundry.tasks.curation import exam_reads

#: how the writers read a file: ``path`` → dataset
Reader = Callable[[Path], pydicom.Dataset]


class SharedReads:
    """``pydicom.dcmread`` that keeps the datasets of ``keep`` for one more read of the same path.

    The second reader gets the very dataset the first one read (not a copy): the NIfTI
    converter, which reads second, may change it (header screening, decompression)."""

    def __init__(self, keep: Iterable[Path]):
        self._keep = {str(p) for p in keep}
        self._kept: dict[str, pydicom.Dataset] = {}

    def __call__(self, path: Path) -> pydicom.Dataset:
        key = str(path)
        ds = self._kept.pop(key, None)
        if ds is not None:
            self._keep.discard(key)
            return ds
        ds = exam_reads.read(path)   # from memory when this exam's de-identification wrote it
        if key in self._keep:
            self._kept[key] = ds
        return ds
