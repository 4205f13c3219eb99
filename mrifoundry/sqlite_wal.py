"""SQLite connections shared by the ledger and the pseudonym store: WAL journal and a long
busy timeout, so worker threads and processes can write small rows concurrently."""
from __future__ import annotations

import sqlite3
import time
from pathlib import Path

#: how long opening a connection waits for another one's lock (as the busy timeout)
LOCK_WAIT_S = 60.0


def connect_wal(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=LOCK_WAIT_S, isolation_level=None)
    con.execute(f"PRAGMA busy_timeout={int(LOCK_WAIT_S * 1000)}")
    _ensure_wal(con)
    con.execute("PRAGMA synchronous=NORMAL")
    return con


def _ensure_wal(con: sqlite3.Connection) -> None:
    """WAL mode, set once per database file (it persists). Setting it can return "database is
    locked" at once, without the busy handler, while another connection holds a lock (SQLite
    avoids a deadlock there): seen with 2 curation threads opening the pseudonym store. So the
    mode is read first, and the change retried until the lock wait is over."""
    deadline = time.monotonic() + LOCK_WAIT_S
    delay = 0.005
    while True:
        try:
            if con.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                con.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.5)
