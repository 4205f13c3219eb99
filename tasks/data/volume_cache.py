"""Decoded, scaled training volumes on local disk, read back by crop (memory-mapped).

Every draw of the volume trainers would otherwise decompress a whole ``.nii.gz`` and take
its percentiles (≈ 0.3 s for a 1 mm head: ``python -m bench.volume_loading``) to keep a 96³
crop of it. The cache stores the output of :func:`tasks.data.volume_io.load_volume` once per
file as float16 ``.npy`` (values in [0, 1]: at most 2⁻¹² ≈ 2.4e-4 off) plus the affine; a
draw then reads only the crop's pages.

A hit and a miss return the same float16 values, so a run does not depend on what was
cached before it. Entries are keyed by the NIfTI's resolved path, size and mtime: a
re-converted volume gets a new entry (stale ones stay until the folder is deleted). Files
are written under temporary names and renamed, so concurrent ranks and loader workers
that miss together write the same bytes and readers never see half a file. When the
entry cannot be written (disk full, read-only), the volume is used uncached and the
failure is logged once per process.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np

from mrifoundry.atomic import atomic_path
from mrifoundry.tasks.data.volume_io import LOAD_FORMAT, load_volume

__all__ = ["VolumeCache"]

log = logging.getLogger(__name__)
_FORMAT = f"{LOAD_FORMAT}/float16/v1"   # part of the key: the stored form of load_volume's output


class VolumeCache:
    """``load(path) → (float16 [X, Y, Z] array, possibly memory-mapped; affine)``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._warned = False

    def _key(self, path: Path) -> str:
        st = path.stat()
        ident = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{_FORMAT}"
        return hashlib.sha256(ident.encode()).hexdigest()[:24]

    def files(self, path: str | Path) -> tuple[Path, Path]:
        """(voxels .npy, affine .npy) of ``path``'s entry."""
        key = self._key(Path(path))
        return self.root / f"{key}.npy", self.root / f"{key}.affine.npy"

    def load(self, path: str | Path) -> tuple[np.ndarray, np.ndarray]:
        data_file, affine_file = self.files(path)
        if data_file.exists() and affine_file.exists():
            try:
                return np.load(data_file, mmap_mode="r"), np.load(affine_file)
            except (OSError, ValueError):   # a damaged entry: rebuild it below
                pass
        data, affine = load_volume(path)
        data = data.astype(np.float16)
        self._store(data_file, data)
        self._store(affine_file, np.asarray(affine, dtype=np.float64))
        return data, affine

    def _store(self, final: Path, array: np.ndarray) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with atomic_path(final) as tmp, open(tmp, "wb") as fh:   # a file handle: np.save adds no .npy
                np.save(fh, array)
        except OSError as e:   # also when the folder is missing or not a folder
            if not self._warned:
                self._warned = True
                log.warning("volume cache %s not written (%s): reading volumes uncached", self.root, e.strerror or e)
