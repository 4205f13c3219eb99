"""The stage ledger: one row per (item, stage), in SQLite under ``OUT/state``.

SQLite rather than DuckDB because many worker threads/processes write small rows
concurrently (WAL + busy timeout); the ledger is exported to Parquet for the catalog's
``stage_results`` view at the end of each run. Only opaque ids and reason codes are stored.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from mrifoundry.catalog.reasons import REASONS
from mrifoundry.catalog.schema import STAGE_RESULTS, to_arrow
from mrifoundry import code_version
from mrifoundry.sqlite_wal import connect_wal

_DDL = """
CREATE TABLE IF NOT EXISTS stage_results (
  item_id TEXT NOT NULL, item_kind TEXT NOT NULL, exam_id TEXT NOT NULL, stage TEXT NOT NULL,
  status TEXT NOT NULL, reason TEXT, message TEXT, attempt INTEGER NOT NULL,
  started REAL, finished REAL, code_version TEXT, run_id TEXT, outputs TEXT,
  PRIMARY KEY (item_id, stage)
);
CREATE INDEX IF NOT EXISTS stage_results_exam ON stage_results(exam_id, stage);
"""

STATUSES = ("done", "rejected", "failed")


@dataclass
class LedgerRow:
    item_id: str
    item_kind: str
    exam_id: str
    stage: str
    status: str
    reason: str | None
    message: str | None
    attempt: int


class Ledger:
    """Thread- and process-safe ledger. One connection per thread."""

    def __init__(self, path: Path, run_id: str = "cli"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.run_id = run_id
        self._local = threading.local()
        with self._conn() as c:
            c.executescript(_DDL)

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect_wal(self.path)
            self._local.conn = conn
        yield conn

    def record(self, item_id: str, stage: str, status: str, *, exam_id: str, item_kind: str = "exam",
               reason: str | None = None, message: str | None = None, started: float | None = None,
               outputs: list[str] | None = None) -> None:
        """Upsert the (item, stage) row; ``attempt`` counts the runs of the stage on the item.

        Raises:
            ValueError: unknown status or reason code (reason codes live in catalog/reasons.py).
        """
        if status not in STATUSES:
            raise ValueError(f"status {status!r} not in {STATUSES}")
        if reason is not None and reason not in REASONS:
            raise ValueError(f"unknown reason code {reason!r}")
        now = time.time()
        with self._conn() as c:
            c.execute(
                """INSERT INTO stage_results VALUES (?,?,?,?,?,?,?,1,?,?,?,?,?)
                   ON CONFLICT(item_id, stage) DO UPDATE SET
                     status=excluded.status, reason=excluded.reason, message=excluded.message,
                     attempt=stage_results.attempt+1, started=excluded.started, finished=excluded.finished,
                     code_version=excluded.code_version, run_id=excluded.run_id, outputs=excluded.outputs,
                     item_kind=excluded.item_kind, exam_id=excluded.exam_id""",
                (item_id, item_kind, exam_id, stage, status, reason, message, started or now, now,
                 code_version(), self.run_id, json.dumps(outputs or [])),
            )

    def status(self, item_id: str, stage: str) -> str | None:
        with self._conn() as c:
            row = c.execute("SELECT status FROM stage_results WHERE item_id=? AND stage=?", (item_id, stage)).fetchone()
        return row[0] if row else None

    def state(self, item_id: str, stage: str) -> tuple[str, float | None] | None:
        """(status, finished time) of the row, or None."""
        with self._conn() as c:
            row = c.execute("SELECT status, finished FROM stage_results WHERE item_id=? AND stage=?",
                            (item_id, stage)).fetchone()
        return (row[0], row[1]) if row else None

    def exam_stages(self, exam_id: str) -> dict[str, tuple[str | None, float | None, bool]]:
        """Per stage of one exam, in one query: (the exam's own status, its finish time, whether a
        sub-item — a series, an instance — failed in that stage)."""
        with self._conn() as c:
            rows = c.execute(
                "SELECT stage, max(status) FILTER (WHERE item_id = exam_id), "
                "max(finished) FILTER (WHERE item_id = exam_id), "
                "coalesce(max(status = 'failed') FILTER (WHERE item_id <> exam_id), 0) "
                "FROM stage_results WHERE exam_id = ? GROUP BY stage", (exam_id,)).fetchall()
        return {stage: (status, finished, bool(failed)) for stage, status, finished, failed in rows}

    def unfinished_exams(self, exam_ids: list[str], last_stage: str = "catalog") -> set[str]:
        """Exams that are neither through ``last_stage`` nor rejected as a whole at some stage:
        never started, cut short (a killed or disk-full run whose rows were never written), or
        failed. ``rerun=failed`` takes these, so a run that could not write its ledger never
        makes its exams look finished."""
        with self._conn() as c:
            finished = {r[0] for r in c.execute(
                "SELECT DISTINCT exam_id FROM stage_results WHERE item_id = exam_id AND "
                "((stage = ? AND status = 'done') OR status = 'rejected')", (last_stage,)).fetchall()}
            held = {r[0] for r in c.execute(
                "SELECT exam_id FROM stage_results WHERE item_id = exam_id AND reason = 'phi_quarantined'").fetchall()}
        # a quarantined exam waits for a person (rerun=all brings it back), failed series or not
        return ({e for e in exam_ids if e not in finished} | (self.failed_exams() & set(exam_ids))) - held

    def exams_ended_since(self, exam_ids: list[str], since: float, last_stage: str = "catalog") -> int:
        """How many of ``exam_ids`` ended a stage chain since ``since`` (epoch s): through
        ``last_stage``, or stopped by a rejected or failed stage. Progress of exams in flight."""
        if not exam_ids:
            return 0
        with self._conn() as c:
            c.execute("CREATE TEMP TABLE IF NOT EXISTS _progress_ids (exam_id TEXT PRIMARY KEY)")
            c.execute("DELETE FROM _progress_ids")
            c.executemany("INSERT OR IGNORE INTO _progress_ids VALUES (?)", [(e,) for e in exam_ids])
            (n,), = c.execute(
                "SELECT count(DISTINCT s.exam_id) FROM stage_results s JOIN _progress_ids p USING (exam_id) "
                "WHERE s.item_id = s.exam_id AND s.finished >= ? AND (s.stage = ? OR s.status <> 'done')",
                (since, last_stage)).fetchall()
        return n

    def get(self, item_id: str, stage: str) -> LedgerRow | None:
        with self._conn() as c:
            row = c.execute(
                "SELECT item_id,item_kind,exam_id,stage,status,reason,message,attempt FROM stage_results "
                "WHERE item_id=? AND stage=?", (item_id, stage)).fetchone()
        return LedgerRow(*row) if row else None

    def forget_exam_stage(self, exam_id: str, stage: str, item_kinds: tuple[str, ...] = ("series", "instance", "quality")) -> None:
        """Drop the sub-item rows of one exam's stage before it is redone (no stale series rows)."""
        with self._conn() as c:
            c.execute(
                f"DELETE FROM stage_results WHERE exam_id=? AND stage=? AND item_kind IN ({','.join('?' * len(item_kinds))})",
                (exam_id, stage, *item_kinds),
            )

    def exams_with(self, stage: str, status: str) -> set[str]:
        with self._conn() as c:
            rows = c.execute(
                "SELECT DISTINCT exam_id FROM stage_results WHERE stage=? AND status=?", (stage, status)).fetchall()
        return {r[0] for r in rows}

    def failed_exams(self) -> set[str]:
        """Exams with a ``failed`` row for any item in any stage (one query, not one per exam)."""
        with self._conn() as c:
            rows = c.execute("SELECT DISTINCT exam_id FROM stage_results WHERE status='failed'").fetchall()
        return {r[0] for r in rows}

    def counts(self) -> list[tuple[str, str, str | None, int]]:
        """(stage, status, reason, n) over the whole ledger."""
        with self._conn() as c:
            return c.execute(
                "SELECT stage, status, reason, COUNT(*) FROM stage_results GROUP BY 1,2,3 ORDER BY 1,2,3").fetchall()

    def to_arrow(self):
        with self._conn() as c:
            rows = c.execute(
                "SELECT item_id,item_kind,exam_id,stage,status,reason,message,attempt,started,finished,"
                "code_version,run_id,outputs FROM stage_results ORDER BY exam_id, stage, item_id").fetchall()
        def ts(x):
            return dt.datetime.fromtimestamp(x, dt.timezone.utc) if x is not None else None
        out = []
        for (item_id, kind, exam, stage, status, reason, msg, attempt, st, fin, ver, run, outputs) in rows:
            out.append(dict(item_id=item_id, item_kind=kind, exam_id=exam, stage=stage, status=status,
                            reason=reason, message=msg, attempt=attempt, started=ts(st), finished=ts(fin),
                            duration_s=(fin - st) if st and fin else None, code_version=ver, run_id=run,
                            outputs=outputs))
        return to_arrow(STAGE_RESULTS, out)
