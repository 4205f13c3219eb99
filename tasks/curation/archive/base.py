"""What every image archive offers: :class:`StudyRef` and the :class:`Archive` protocol.

Implementations: :class:`tasks.curation.archive.folder.FolderArchive` (a folder of DICOM) and
:class:`tasks.curation.archive.pacs.PacsArchive` (a PACS over DICOM networking).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class StudyRef:
    """A study found in the archive (restricted: carries PHI)."""
    key: str                 # accession number, or "uid:<StudyInstanceUID>" when it has none
    accession_number: str
    study_uid: str
    patient_mrn: str
    n_files: int


class Archive(Protocol):
    def studies(self) -> list[StudyRef]:
        """Every study in the archive (used when no report export is given)."""

    def find(self, accession_number: str) -> list[StudyRef]:
        """Studies with this accession number (empty when unknown)."""

    def fetch(self, study: StudyRef, dest: Path) -> list[Path]:
        """Make the study's files available under ``dest`` (or in place); return their paths.

        Raises:
            mrifoundry.errors.RetrievalError: the archive is unreachable or the transfer broke.
        """
