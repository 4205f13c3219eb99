"""Image archives behind one interface: look a study up by accession, fetch its files.

:class:`FolderArchive` serves any folder of DICOM (nested or flat, with or without a
DICOMDIR) through an index of headers kept in the restricted zone. A PACS client
(C-FIND/C-GET with pynetdicom) implements the same :class:`Archive` protocol.
"""
from __future__ import annotations

import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq
import pydicom

MEDIA_DIRECTORY_SOP = "1.2.840.10008.1.3.10"  # DICOMDIR
_INDEX_TAGS = ["AccessionNumber", "StudyInstanceUID", "SeriesInstanceUID", "PatientID", "Modality",
               "MediaStorageSOPClassUID", "SOPClassUID"]
INDEX_SCHEMA = pa.schema([
    ("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("parsed", pa.bool_()),
    ("accession_number", pa.string()), ("study_uid", pa.string()), ("series_uid", pa.string()),
    ("patient_mrn", pa.string()), ("modality", pa.string()), ("study_key", pa.string()),
])


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


def _study_key(acc: str, uid: str) -> str:
    return acc if acc else f"uid:{uid}"


def _read_header(path: str) -> dict:
    row = dict(path=path, parsed=False, accession_number=None, study_uid=None, series_uid=None,
               patient_mrn=None, modality=None, study_key=None)
    try:
        # force: raw datasets without preamble/file meta exist in the wild; junk is caught below
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_INDEX_TAGS, force=True)
    except Exception:  # noqa: BLE001 — forced parsing of non-DICOM raises many types
        return row
    sop = str(getattr(ds, "SOPClassUID", "") or ds.get("file_meta", {}).get("MediaStorageSOPClassUID", "") or "")
    if sop == MEDIA_DIRECTORY_SOP or "DirectoryRecordSequence" in ds:
        row["parsed"] = None  # a DICOMDIR: not an image of any study
        return row
    uid = str(ds.get("StudyInstanceUID", "") or "")
    if not uid:
        return row
    acc = str(ds.get("AccessionNumber", "") or "").strip()
    row.update(parsed=True, accession_number=acc, study_uid=uid, series_uid=str(ds.get("SeriesInstanceUID", "")),
               patient_mrn=str(ds.get("PatientID", "") or ""), modality=str(ds.get("Modality", "") or ""),
               study_key=_study_key(acc, uid))
    return row


def _read_headers(paths: list[str]) -> list[dict]:
    return [_read_header(p) for p in paths]


class FolderArchive:
    """A folder of DICOM files, indexed once (incrementally on later runs).

    Files that cannot be parsed are attributed to the study whose files share their folder
    (when exactly one does), so the de-identification stage can reject them with a reason.
    """

    def __init__(self, root: Path, index_path: Path, workers: int = 2):
        self.root = Path(root)
        self.index_path = Path(index_path)
        self.workers = workers
        self._rows: list[dict] | None = None
        self._groups: dict[str, list[dict]] | None = None

    def _scan(self) -> list[dict]:
        from mrifoundry.errors import RetrievalError
        if not self.root.is_dir():
            raise RetrievalError("archive", "archive_unreachable", "archive folder does not exist")
        previous: dict[str, dict] = {}
        if self.index_path.exists():
            previous = {r["path"]: r for r in pq.read_table(self.index_path).to_pylist()}
        rows, todo = [], []
        for dirpath, _dirs, files in os.walk(self.root):
            for name in sorted(files):
                p = os.path.join(dirpath, name)
                try:
                    st = os.stat(p)
                except OSError:
                    continue
                old = previous.get(p)
                if old and old["size"] == st.st_size and old["mtime_ns"] == st.st_mtime_ns:
                    rows.append(old)
                else:
                    todo.append((p, st.st_size, st.st_mtime_ns))
        if todo:
            paths = [t[0] for t in todo]
            chunks = [paths[i:i + 500] for i in range(0, len(paths), 500)]
            if self.workers > 1 and len(chunks) > 1:
                with ProcessPoolExecutor(self.workers) as ex:
                    parsed = [r for chunk in ex.map(_read_headers, chunks) for r in chunk]
            else:
                parsed = _read_headers(paths)
            for (p, size, mtime), r in zip(todo, parsed):
                r.update(size=size, mtime_ns=mtime)
                rows.append(r)
        self._attribute_orphans(rows)
        rows.sort(key=lambda r: r["path"])
        self.index_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.index_path.with_name(f".{self.index_path.name}.tmp{os.getpid()}")
        pq.write_table(pa.Table.from_pylist(rows, schema=INDEX_SCHEMA), tmp)
        os.replace(tmp, self.index_path)
        return rows

    @staticmethod
    def _attribute_orphans(rows: list[dict]) -> None:
        by_dir: dict[str, set[str]] = defaultdict(set)
        for r in rows:
            if r["parsed"]:
                by_dir[os.path.dirname(r["path"])].add(r["study_key"])
        for r in rows:
            if r["parsed"] is False:
                keys = by_dir.get(os.path.dirname(r["path"]), set())
                r["study_key"] = next(iter(keys)) if len(keys) == 1 else None

    @property
    def rows(self) -> list[dict]:
        if self._rows is None:
            self._rows = self._scan()
        return self._rows

    def _group(self) -> dict[str, list[dict]]:
        # built once per archive object: find() is called once per exam
        if self._groups is None:
            groups: dict[str, list[dict]] = defaultdict(list)
            for r in self.rows:
                if r["study_key"]:
                    groups[r["study_key"]].append(r)
            self._groups = dict(groups)
        return self._groups

    def _ref(self, key: str, files: list[dict]) -> StudyRef:
        head = next(f for f in files if f["parsed"])
        return StudyRef(key=key, accession_number=head["accession_number"] or "", study_uid=head["study_uid"],
                        patient_mrn=head["patient_mrn"] or "", n_files=len(files))

    def studies(self) -> list[StudyRef]:
        return [self._ref(k, v) for k, v in sorted(self._group().items()) if any(f["parsed"] for f in v)]

    def find(self, accession_number: str) -> list[StudyRef]:
        files = self._group().get(accession_number.strip(), [])
        return [self._ref(accession_number.strip(), files)] if any(f["parsed"] for f in files) else []

    def fetch(self, study: StudyRef, dest: Path) -> list[Path]:
        # folder archive: read in place, nothing is copied
        from mrifoundry.errors import RetrievalError
        files = [Path(r["path"]) for r in self._group().get(study.key, [])]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise RetrievalError("archive", "archive_unreachable", f"{len(missing)} indexed files vanished")
        return files


def open_archive(spec: str, restricted: Path, workers: int = 2) -> Archive:
    """An archive from its location: a folder path (or ``file://``), or a PACS URL
    ``dicom://CALLED_AET@host:port?calling=OUR_AET&…`` (:mod:`tasks.pacs`, docs/pacs.md).

    Raises:
        ValueError: unsupported scheme, or a malformed ``dicom://`` URL.
    """
    if spec.startswith("dicom://"):
        from tasks.pacs import PacsArchive
        return PacsArchive(spec)
    if "://" in spec and not spec.startswith("file://"):
        raise ValueError(f"archive scheme of {spec.split('://')[0]!r} is not supported; use a folder or dicom://")
    root = Path(spec.removeprefix("file://"))
    return FolderArchive(root, restricted / "archive_index.parquet", workers=workers)
