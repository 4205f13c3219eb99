"""A folder of DICOM (nested or flat, with or without a DICOMDIR) as an :class:`Archive`,
through a header index kept in the restricted zone (:mod:`tasks.curation.archive.folder_index`)."""
from __future__ import annotations

import threading
from pathlib import Path

from mrifoundry.duck import quiet_connect
from mrifoundry.errors import RetrievalError
from mrifoundry.tasks.curation.archive.base import StudyRef
from mrifoundry.tasks.curation.archive.folder_index import WalkLimits, build_index, decode_path, sql_literal


class FolderArchive:
    """A folder of DICOM files, indexed once per process (incrementally: unchanged files are
    not parsed again). Lookups are SQL over the index file, so no process holds the archive's
    file list in memory. Files that cannot be parsed are attributed to the study whose files
    share their folder (when exactly one does), so de-identification rejects them with a reason.
    """

    def __init__(self, root: Path, index_path: Path, workers: int = 2, limits: WalkLimits = WalkLimits()):
        self.root = Path(root)
        self.index_path = Path(index_path)
        self.workers = workers
        self.limits = limits
        self._indexed = False
        self._lock = threading.Lock()
        self._local = threading.local()

    def ensure_index(self) -> None:
        """Build or refresh the index once for this object.

        Raises:
            RetrievalError: the folder does not exist (archive_unreachable).
        """
        with self._lock:
            if self._indexed:
                return
            if not self.root.is_dir():
                raise RetrievalError("archive", "archive_unreachable", "archive folder does not exist")
            build_index(self.root, self.index_path, workers=self.workers, limits=self.limits)
            self._indexed = True

    def use_existing_index(self) -> None:
        """Trust the index on disk (built by the selection step of this run)."""
        if self.index_path.exists():
            self._indexed = True
        else:
            self.ensure_index()

    def _sql(self, query: str, params: list) -> list[tuple]:
        if not self._indexed:
            self.ensure_index()
        # one connection per thread, kept: a DuckDB connection is not shared across threads, and
        # opening one per lookup cost ≈ 16 ms of every exam's retrieval (bench: python -m bench.scale)
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = quiet_connect()
        return con.execute(query.replace("IDX", f"read_parquet({sql_literal(self.index_path)})"), params).fetchall()

    _STUDY = ("SELECT study_key, any_value(accession_number) FILTER (WHERE parsed), "
              "any_value(study_uid) FILTER (WHERE parsed), any_value(patient_mrn) FILTER (WHERE parsed), "
              "COUNT(*) FROM IDX WHERE study_key IS NOT NULL {where} GROUP BY 1 HAVING bool_or(parsed) ORDER BY 1")

    def _refs(self, rows) -> list[StudyRef]:
        return [StudyRef(key=k, accession_number=a or "", study_uid=u, patient_mrn=m or "", n_files=n)
                for k, a, u, m, n in rows]

    def studies(self) -> list[StudyRef]:
        return self._refs(self._sql(self._STUDY.format(where=""), []))

    def find(self, accession_number: str) -> list[StudyRef]:
        """Also accepts the ``uid:<StudyInstanceUID>`` keys of studies without an accession number."""
        return self._refs(self._sql(self._STUDY.format(where="AND study_key = ?"), [accession_number.strip()]))

    def total_size(self, study_keys: list[str]) -> int:
        """Bytes of the archive files of these studies (a pre-flight estimate of a run's output)."""
        if not study_keys:
            return 0
        return int(self._sql("SELECT coalesce(sum(size), 0) FROM IDX WHERE list_contains(?, study_key)",
                             [study_keys])[0][0])

    def fetch(self, study: StudyRef, dest: Path) -> list[Path]:
        # folder archive: read in place, nothing is copied
        files = [Path(decode_path(r[0])) for r in self._sql("SELECT path FROM IDX WHERE study_key = ? ORDER BY path", [study.key])]
        missing = [f for f in files if not f.exists()]
        if missing:
            raise RetrievalError("archive", "archive_unreachable", f"{len(missing)} indexed files vanished")
        return files
