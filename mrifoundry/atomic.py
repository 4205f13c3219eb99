"""Atomic writes: a file or a folder appears whole or not at all.

Every writer of the project goes through here. Temp names are ``.<name>.tmp<pid>.<thread>``
and ``.<name>.old<pid>.<thread>`` beside the target (same file system, so the rename is atomic),
which is what the curation's temp sweep recognises (:func:`is_temp`) and removes after a killed
or disk-full run (``tasks/curation/stage_guard.py::sweep_temp``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["TEMP_MARKS", "atomic_path", "is_temp", "replace_dir", "temp_name", "write_bytes", "write_text"]

#: what every temp name of :func:`temp_name` contains (after its leading ".")
TEMP_MARKS = (".tmp", ".old")

#: compression suffixes kept together with the suffix before them (``.nii.gz``, ``.tar.zst``)
_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def _suffix(path: Path) -> str:
    parts = path.suffixes
    if len(parts) >= 2 and parts[-1] in _COMPRESSED:
        return "".join(parts[-2:])
    return parts[-1] if parts else ""


def temp_name(path: Path, mark: str = "tmp", keep_suffix: bool = False) -> Path:
    """``.<name>.<mark><pid>.<thread>`` beside ``path``: unique per process and thread.
    ``keep_suffix``: the target's suffix is repeated at the end (``.x.nii.gz.tmp1.2.nii.gz``), for
    writers that pick the format from it (nibabel)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{mark}{os.getpid()}.{threading.get_ident()}"
                          + (_suffix(path) if keep_suffix else ""))


def is_temp(name: str) -> bool:
    """True for a name :func:`temp_name` makes (``.<name>.tmp…``, ``.<name>.old…``)."""
    return name.startswith(".") and any(m in name for m in TEMP_MARKS)


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: Path | str, mkdir: bool = True, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temp path to write (a file, or a folder the caller makes); when the block ends
    normally it replaces ``path``, on an error it is removed. A ``return`` inside the block also
    commits: catch refusals outside the ``with``.

    >>> with atomic_path(out / "x.png") as tmp:
    ...     image.save(tmp, format="PNG")   # name the format: the temp suffix is not .png
    >>> with atomic_path(out / "x.nii.gz", keep_suffix=True) as tmp:
    ...     nib.save(img, tmp)              # the temp ends in .nii.gz: nibabel gzips
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path, keep_suffix=keep_suffix)
    _remove(tmp)   # a leftover of a killed run of this pid and thread
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        _remove(tmp)


def write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: Path | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def replace_dir(new: Path, final: Path) -> None:
    """Swap the finished folder ``new`` into ``final`` with two renames: readers see the old folder
    or the new one, never a mix; a crash between them leaves ``.<final>.old…``, which the temp
    sweep removes (and ``final`` absent, so the item is redone)."""
    new, final = Path(new), Path(final)
    old = temp_name(final, "old")
    _remove(old)
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
