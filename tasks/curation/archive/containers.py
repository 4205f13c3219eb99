"""Zip, tar and gzip files in an archive: expanded once under one budget per container.

One budget covers a container and everything nested in it (an absolute cap and a compression-ratio
cap, counted on the bytes written); members stream to short, flat, printable names; blank members
are dropped; nesting is bounded. Each container gets a status and reason for the stage ledger.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

from mrifoundry.atomic import atomic_path
from mrifoundry.errors import is_disk_full
from mrifoundry.tasks.curation.archive.files import WalkLimits, looks_like_dicom

CONTAINER_SUFFIXES = (".zip", ".gz", ".tgz", ".tar")


class ContainerRefused(Exception):
    """The container's expansion broke the budget; the message names the rule, never a member name."""


class _Budget:
    def __init__(self, compressed: int, limits: WalkLimits):
        self.limits, self.compressed, self.written, self.members = limits, max(compressed, 1), 0, 0

    def add(self, n: int) -> None:
        self.written += n
        lim = self.limits
        if self.written > lim.max_expanded_bytes:
            raise ContainerRefused(f"expands past {lim.max_expanded_bytes >> 20} MiB")
        if self.written > lim.ratio_slack_bytes and self.written > lim.max_ratio * self.compressed:
            raise ContainerRefused(f"expands more than {lim.max_ratio:g}x its size (a zip bomb?)")


def _safe_member_name(i: int, name: str) -> str:
    """A flat, short, printable file name for a member: nothing lands outside the folder and no
    member name (254 characters, control characters, '..') fails the container."""
    base = os.path.basename(name.replace("\\", "/").rstrip("/")) or "member"
    base = "".join(c if c.isprintable() and c not in "/\\" else "_" for c in base).lstrip(".") or "member"
    raw = base.encode("utf-8", "surrogateescape")
    if len(raw) > 80:   # keep the suffix (.dcm, .zip) that says what the member is
        stem, ext = os.path.splitext(base)
        base = stem.encode("utf-8", "surrogateescape")[:60].decode("utf-8", "ignore") + "~" + ext[-12:]
    return f"{i:05d}_{base}"   # undecodable bytes (lone surrogates) were replaced with the non-printables


def _copy_member(src, out_path: Path, budget: _Budget) -> bool:
    """Stream one member to ``out_path`` under the budget. False (nothing kept) for a blank member:
    empty or only zero bytes, which no DICOM is."""
    nonblank = False
    with open(out_path, "wb") as out:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            budget.add(len(chunk))
            nonblank = nonblank or chunk.count(0) != len(chunk)
            out.write(chunk)
    if not nonblank:
        out_path.unlink()
    return nonblank


def _members(path: str):
    """(name, opener) of a zip, tar (any compression) or gzip file. Raises when it is none."""
    if zipfile.is_zipfile(path):
        zf = zipfile.ZipFile(path)
        return [(m.filename, lambda m=m: zf.open(m)) for m in zf.infolist() if not m.is_dir()], zf
    if tarfile.is_tarfile(path):
        tf = tarfile.open(path)
        return [(m.name, lambda m=m: tf.extractfile(m)) for m in tf.getmembers() if m.isfile()], tf
    with gzip.open(path, "rb") as probe:
        probe.read(1)   # raises unless it is a gzip stream
    name = os.path.basename(path)
    return [(name[:-3] if name.lower().endswith(".gz") else name, lambda: gzip.open(path, "rb"))], None


def _extract(path: str, dest: Path, budget: _Budget, depth: int) -> None:
    if depth > budget.limits.max_depth:
        raise ContainerRefused(f"containers nested deeper than {budget.limits.max_depth}")
    members, handle = _members(path)
    try:
        for i, (name, opener) in enumerate(members):
            budget.members += 1
            if budget.members > budget.limits.max_members:
                raise ContainerRefused(f"more than {budget.limits.max_members} members")
            out = dest / _safe_member_name(i, name)
            with opener() as src:
                if not _copy_member(src, out, budget):
                    continue
            if out.name.lower().endswith(CONTAINER_SUFFIXES) and not looks_like_dicom(str(out)):
                sub = dest / f"{out.name}.d"
                sub.mkdir()
                try:
                    _extract(str(out), sub, budget, depth + 1)
                except ContainerRefused:
                    raise
                except Exception as e:  # noqa: BLE001 - not a container after all: keep the member as a file
                    shutil.rmtree(sub, ignore_errors=True)
                    if is_disk_full(e):
                        raise
                    continue
                out.unlink()
    finally:
        if handle is not None:
            handle.close()


def expand_container(path: str, size: int, mtime_ns: int, root: Path,
                     limits: WalkLimits = WalkLimits()) -> tuple[list[str] | None, str, str | None, str]:
    """Expand a zip, tar (any compression) or gzip file once under ``root/<key>/`` (restricted
    zone; key = hash of path, size and mtime, so a changed container is expanded anew), within one
    budget for the container and everything nested in it.

    Returns:
        (member paths or None, status, reason, message): ``done`` with the members; ``rejected``
        ``container_refused`` (budget), ``container_empty`` (no non-blank member) or
        ``container_unreadable`` (does not open as a container; members None).
    """
    key = hashlib.sha256(f"{path}|{size}|{mtime_ns}".encode("utf-8", "surrogateescape")).hexdigest()[:20]
    dest = root / key
    if not dest.is_dir():
        try:   # the refusals are caught outside the block: a return inside it would commit the folder
            with atomic_path(dest) as tmp:
                tmp.mkdir()
                _extract(path, tmp, _Budget(size, limits), 1)
        except ContainerRefused as e:
            return None, "rejected", "container_refused", str(e)
        except Exception as e:  # noqa: BLE001 - corrupt, or not a container at all
            if is_disk_full(e):
                raise
            return None, "rejected", "container_unreadable", f"does not expand as zip, tar or gzip ({type(e).__name__})"
    members = sorted(str(p) for p in dest.rglob("*") if p.is_file())
    if not members:
        return [], "rejected", "container_empty", "no member with content (empty, or only zero bytes)"
    return members, "done", None, f"expanded {len(members)} file(s)"
