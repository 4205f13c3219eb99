"""Image archives behind one interface: look a study up by accession, fetch its files.

:func:`open_archive` picks the implementation: :class:`FolderArchive` (:mod:`.folder`, a folder
of DICOM through a header index in the restricted zone) or :class:`PacsArchive` (:mod:`.pacs`,
C-FIND/C-GET with pynetdicom). Both follow the :class:`Archive` protocol (:mod:`.base`).
"""
from __future__ import annotations

from pathlib import Path

from mrifoundry.tasks.curation.archive.base import Archive, StudyRef
from mrifoundry.tasks.curation.archive.folder import FolderArchive
from mrifoundry.tasks.curation.archive.folder_index import WalkLimits
from mrifoundry.tasks.curation.archive.pacs import PacsArchive

__all__ = ["Archive", "FolderArchive", "PacsArchive", "StudyRef", "WalkLimits", "open_archive", "walk_limits"]


def open_archive(spec: str, restricted: Path, workers: int = 2, limits: WalkLimits = WalkLimits()) -> Archive:
    """An archive from its location: a folder path (or ``file://``), or a PACS URL
    ``dicom://CALLED_AET@host:port?calling=OUR_AET&…`` (:mod:`tasks.curation.archive.pacs`, docs/pacs.md).

    Raises:
        ValueError: unsupported scheme, or a malformed ``dicom://`` URL.
    """
    if spec.startswith("dicom://"):
        return PacsArchive(spec)
    if "://" in spec and not spec.startswith("file://"):
        raise ValueError(f"archive scheme of {spec.split('://')[0]!r} is not supported; use a folder or dicom://")
    root = Path(spec.removeprefix("file://"))
    return FolderArchive(root, restricted / "archive_index.parquet", workers=workers, limits=limits)


def walk_limits(params) -> WalkLimits:
    """The folder walk's limits from the curate parameters (``CurateParams``)."""
    return WalkLimits(follow_symlinks=params.follow_symlinks, max_file_bytes=params.max_file_mb << 20,
                      max_expanded_bytes=params.max_container_mb << 20, max_ratio=params.max_container_ratio)
