"""DuckDB connections for batch code: no progress bar in logs (it cannot be set in ``connect``'s config)."""
from __future__ import annotations

import duckdb


def quiet_connect(*args, **kwargs) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(*args, **kwargs)
    con.execute("SET enable_progress_bar = false")
    return con
