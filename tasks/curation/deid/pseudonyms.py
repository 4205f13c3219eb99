"""The pseudonym map (restricted zone only): patient key → pseudonym and date shift, exam key → exam id."""
from __future__ import annotations

import datetime as dt
import sqlite3
import threading
from pathlib import Path

from mrifoundry import ids
from mrifoundry.sqlite_wal import connect_wal

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS patients (patient_key TEXT PRIMARY KEY, pseudonym TEXT NOT NULL,
                                     shift_days INTEGER, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS exams (exam_key TEXT PRIMARY KEY, exam_id TEXT NOT NULL,
                                  patient_key TEXT NOT NULL, created TEXT NOT NULL);
"""


class PseudonymStore:
    """Pseudonym map in SQLite (OUT/restricted only): patient key -> pseudonym and date shift,
    exam key -> exam id. WAL + busy timeout; one connection per thread; picklable for process
    pools. Values are derived from the salt, so concurrent writers always agree.

    Raises:
        ValueError: empty salt, or the file was created with another salt.
    """

    def __init__(self, path: Path, salt: str):
        if not salt:
            raise ValueError("an empty salt would make pseudonyms reversible")
        self.path, self.salt = Path(path), salt
        self._local, self._shifts = threading.local(), {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = self._con()
        con.executescript(_SCHEMA)
        check = ids.opaque_id("store-check", "salt", salt)
        con.execute("INSERT OR IGNORE INTO meta VALUES ('salt_check', ?)", (check,))
        if con.execute("SELECT value FROM meta WHERE key='salt_check'").fetchone()[0] != check:
            raise ValueError("this pseudonym store was created with a different salt")

    def __getstate__(self) -> dict:
        return {"path": self.path, "salt": self.salt}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], state["salt"])

    def _con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = connect_wal(self.path)
            self._local.con = con
        return con

    def close(self) -> None:
        """Close this thread's connection."""
        con = getattr(self._local, "con", None)
        if con is not None:
            con.close()
            self._local.con = None

    def patient_pseudonym(self, patient_key: str) -> str:
        """``ids.patient_id(patient_key)``; the row is persisted on first use."""
        con = self._con()
        con.execute("INSERT OR IGNORE INTO patients (patient_key, pseudonym, created) VALUES (?, ?, ?)",
                    (patient_key, ids.patient_id(patient_key, self.salt), _now()))
        return con.execute("SELECT pseudonym FROM patients WHERE patient_key=?", (patient_key,)).fetchone()[0]

    def date_shift_days(self, patient_key: str, max_days: int = 365) -> int:
        """The patient's date shift in [-max_days, -1] ∪ [1, max_days], derived from the salt and
        persisted on first use (a later call with another ``max_days`` keeps the stored shift)."""
        if patient_key in self._shifts:
            return self._shifts[patient_key]
        n = int(ids.opaque_id("dateshift", patient_key, self.salt), 16) % (2 * max_days)
        shift = n - max_days if n < max_days else n - max_days + 1
        self.patient_pseudonym(patient_key)
        con = self._con()
        con.execute("UPDATE patients SET shift_days=? WHERE patient_key=? AND shift_days IS NULL",
                    (shift, patient_key))
        stored = con.execute("SELECT shift_days FROM patients WHERE patient_key=?", (patient_key,)).fetchone()[0]
        self._shifts[patient_key] = int(stored)
        return int(stored)

    def record_exam(self, exam_key: str, exam_id: str, patient_key: str) -> None:
        """Map an exam key (accession number or ``uid:``StudyInstanceUID) to its exam id and patient."""
        self.patient_pseudonym(patient_key)
        self._con().execute(
            "INSERT INTO exams VALUES (?, ?, ?, ?) ON CONFLICT(exam_key) DO UPDATE SET "
            "exam_id=excluded.exam_id, patient_key=excluded.patient_key", (exam_key, exam_id, patient_key, _now()))

    def exam(self, exam_key: str) -> tuple[str, str] | None:
        """(exam_id, patient pseudonym) of a recorded exam, or None."""
        row = self._con().execute("SELECT e.exam_id, p.pseudonym FROM exams e JOIN patients p "
                                  "USING (patient_key) WHERE e.exam_key=?", (exam_key,)).fetchone()
        return tuple(row) if row else None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
