"""SQLite connections shared by the ledger and the pseudonym store: WAL journal and a long
busy timeout, so worker threads and processes can write small rows concurrently."""
from __future__ import annotations

import sqlite3
from pathlib import Path


def connect_wal(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=60, isolation_level=None)
    con.execute("PRAGMA busy_timeout=60000")
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    return con
