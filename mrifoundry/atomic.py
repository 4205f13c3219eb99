"""Atomic writes: a file or a folder appears whole or not at all.

Every writer of the project goes through here. Temp names are ``.<name>.tmp<pid>.<thread>``
and ``.<name>.old<pid>`` beside the target (same file system, so the rename is atomic), which is
what the curation's temp sweep recognises and removes after a killed or disk-full run
(``tasks/curation/stages.py::sweep_temp``).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "replace_dir", "temp_name", "write_bytes", "write_text"]


def temp_name(path: Path, mark: str = "tmp") -> Path:
    """``.<name>.<mark><pid>.<thread>`` beside ``path``: unique per process and thread."""
    return path.with_name(f".{path.name}.{mark}{os.getpid()}.{threading.get_ident()}")


@contextlib.contextmanager
def atomic_path(path: Path | str, mkdir: bool = True) -> Iterator[Path]:
    """Yield a temp path to write; on success it replaces ``path``, on an error it is removed.

    >>> with atomic_path(out / "x.png") as tmp:
    ...     image.save(tmp, format="PNG")   # name the format: the temp suffix is not .png
    """
    path = Path(path)
    if mkdir:
        path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


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
    old = temp_name(final, "old")
    if final.exists():
        os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old, ignore_errors=True)
