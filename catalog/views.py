"""The DuckDB database of views over the Parquet tables.

Views use absolute paths so the database opens from any working directory, in any DuckDB client.
Path columns are stored relative to the research root in Parquet and exposed as absolute
``*_file`` columns by the views. The root the views were built for is recorded (a comment on the
``exams`` view): :func:`connect` finds a catalog that was moved or copied and rebuilds its views
where it is now (or, on a read-only mount, opens in-memory views of the same), so a moved output
folder is queried where it is and a copy never reads the original's files.
"""
from __future__ import annotations

import re
from pathlib import Path

import duckdb

from mrifoundry.atomic import atomic_path
from mrifoundry.catalog.schema import (DERIVED_TABLES, EVALUATIONS, FEATURES, LABELLED_SLICES, LABELLED_VOLUMES, MODELS, RESEARCH_TABLES, REPORTS,
                            SERIES, SERIES_QUALITY, SLICES, VOLUME_FEATURES)
from mrifoundry.catalog.store import catalog_dir, ensure_derived_tables, table_file
from mrifoundry.catalog.views_quality import EXCLUDED, quality_views

DB_NAME = "catalog.duckdb"


def _q(s: str) -> str:
    return "'" + str(s).replace("'", "''") + "'"


#: relative path column → absolute column added by the view, per table
ABSOLUTE_COLUMNS = {
    SLICES.name: (("png_path", "png_file"),),
    SERIES.name: (("dicom_dir", "dicom_folder"), ("nifti_path", "nifti_file")),
    SERIES_QUALITY.name: (("thumb_path", "thumb_file"),),
    FEATURES.name: (("grid_path", "grid_file"),),
    EVALUATIONS.name: (("picture_path", "picture_file"),),
    MODELS.name: (("checkpoint_path", "checkpoint_file"), ("loss_curve_path", "loss_curve_file")),
    LABELLED_SLICES.name: (("image_path", "image_file"), ("mask_path", "mask_file")),
    LABELLED_VOLUMES.name: (("image_path", "image_file"), ("label_path", "label_file")),
}


def _view_sql(research: Path, name: str) -> str:
    path = table_file(research, next(t for t in RESEARCH_TABLES + DERIVED_TABLES if t.name == name))
    root = _q(str(research.resolve()) + "/")
    src = f"read_parquet({_q(path.resolve())})"
    if name in (FEATURES.name, VOLUME_FEATURES.name):
        # the (empty) table file plus every feature set present when the views were built
        # (extract-features rebuilds them); a glob matching nothing would fail the view
        files = [path] + sorted((research / "features").glob(f"*/{name}.parquet"))
        src = f"read_parquet([{', '.join(_q(p.resolve()) for p in files)}])"
    # root || NULL is NULL, so a path column that may be null needs no CASE
    extra = "".join(f", {root} || {rel} AS {absolute}" for rel, absolute in ABSOLUTE_COLUMNS.get(name, ()))
    return f"SELECT *{extra} FROM {src}"


_ROOT_MARK = "research_root="


def _create_views(con: duckdb.DuckDBPyConnection, research: Path) -> None:
    for t in RESEARCH_TABLES + DERIVED_TABLES:
        con.execute(f"CREATE VIEW {t.name} AS {_view_sql(research, t.name)}")
    con.execute(
        "CREATE VIEW rejections AS SELECT stage, reason, item_kind, COUNT(*) AS n "
        "FROM stage_results WHERE status <> 'done' GROUP BY ALL ORDER BY n DESC")
    for sql in quality_views():   # series_decisions first: the training views read it
        con.execute(sql)
    con.execute(
        "CREATE VIEW training_slices AS SELECT s.*, r.sequence_type, r.orientation, r.field_strength, "
        "r.manufacturer, e.body_part, e.protocol, e.patient_id FROM slices s "
        "JOIN series r USING (series_id) JOIN exams e ON e.exam_id = s.exam_id WHERE r.status = 'ok' "
        f"AND s.series_id NOT IN {EXCLUDED}")
    con.execute(f"COMMENT ON VIEW exams IS {_q(_ROOT_MARK + _root(research))}")


def _root(research: Path) -> str:
    return str(Path(research).resolve()) + "/"


def build_research_db(research: Path) -> Path:
    """(Re)create ``catalog.duckdb`` with one view per research table, plus helper views."""
    db = catalog_dir(research) / DB_NAME
    ensure_derived_tables(research)
    with atomic_path(db) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            _create_views(con, research)
        finally:
            con.close()
    return db


def built_root(research: Path) -> str | None:
    """The research root the catalog's views were built for (None for a catalog older than the record)."""
    con = duckdb.connect(str(catalog_dir(research) / DB_NAME), read_only=True)
    try:
        return _recorded_root(con)
    finally:
        con.close()


def _recorded_root(con: duckdb.DuckDBPyConnection) -> str | None:
    row = con.execute("SELECT comment FROM duckdb_views() WHERE view_name = 'exams'").fetchone()
    text = (row[0] if row else None) or ""
    return text[len(_ROOT_MARK):] if text.startswith(_ROOT_MARK) else None


def build_restricted_db(restricted: Path) -> Path:
    """``restricted/restricted.duckdb``: the reports view (PHI). Never opened by downstream flows."""
    db = restricted / "restricted.duckdb"
    with atomic_path(db) as tmp:
        con = duckdb.connect(str(tmp))
        try:
            src = restricted / "reports" / "reports.parquet"
            con.execute(f"CREATE VIEW {REPORTS.name} AS SELECT * FROM read_parquet({_q(src.resolve())})")
        finally:
            con.close()
    return db


def connect(research: Path, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the research catalog.

    Raises:
        FileNotFoundError: no catalog yet — run the ``curate`` flow first.
    """
    db = catalog_dir(research) / DB_NAME
    if not db.exists():
        raise FileNotFoundError(f"{db} not found: run `mrifoundry curate` (flow curate) first")
    con = duckdb.connect(str(db), read_only=read_only)
    if _recorded_root(con) == _root(research):
        return con
    con.close()   # moved or copied since the views were built: rebuild them where the catalog is now
    try:
        build_research_db(research)
    except OSError:   # a read-only mount: the same views, in memory, for this connection
        con = duckdb.connect(":memory:")
        _create_views(con, research)
        return con
    return duckdb.connect(str(db), read_only=read_only)


#: statement types the research SQL entry point runs (DESCRIBE, SHOW and SUMMARIZE parse as SELECT;
#: EXPLAIN is checked on the statement it explains, since EXPLAIN ANALYZE executes it)
READ_STATEMENTS = frozenset({"SELECT", "EXPLAIN", "PRAGMA"})
#: PRAGMAs that only read the catalog's metadata
READ_PRAGMAS = frozenset({"table_info", "show", "show_tables", "show_tables_expanded", "database_list",
                          "database_size", "storage_info", "functions", "collations", "version", "platform",
                          "user_agent"})
_LEADING_COMMENTS = re.compile(r"\A(?:\s+|--[^\n]*(?:\n|\Z)|/\*.*?\*/)*", re.S)
_EXPLAIN = re.compile(r"EXPLAIN\s+(?:ANALY[SZ]E\s+)?(?:\([^)]*\)\s*)?(?P<inner>.+)\Z", re.S | re.I)
_PRAGMA = re.compile(r"PRAGMA\s+(?P<name>\w+)", re.I)


class RefusedStatement(ValueError):
    """A statement that is not a read query on the research catalog (``what`` names it, e.g. ``COPY``)."""

    def __init__(self, what: str):
        self.what = what
        super().__init__(f"only read queries on the research catalog are allowed ({what} is not)")


def connect_confined(research: Path) -> duckdb.DuckDBPyConnection:
    """The research catalog, read-only, for SQL typed by people (``mrifoundry sql``) or other
    research-side readers: DuckDB's external access is limited to ``research/`` (the views read
    their Parquet files there by absolute path) and the configuration is locked, so no query can
    read the restricted zone or any other file, write a file (outside research/), ATTACH,
    INSTALL/LOAD an extension or SET access back on. Check statements with
    :func:`check_read_query` too: DuckDB still lets ``COPY … TO`` write inside research/.

    Raises:
        FileNotFoundError: no catalog yet — run the ``curate`` flow first.
    """
    con = connect(research, read_only=True)
    try:
        # allowed_directories must be set on the open database, before external access is switched off
        con.execute(f"SET allowed_directories = [{_q(str(research.resolve()) + '/')}]")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


def check_read_query(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Refuse ``sql`` unless every statement in it is a read query: SELECT (with DESCRIBE, SHOW,
    SUMMARIZE), EXPLAIN of one, or a metadata PRAGMA of :data:`READ_PRAGMAS`.

    Raises:
        RefusedStatement: naming the first statement kind that is not allowed.
        duckdb.ParserException: ``sql`` does not parse.
    """
    statements = con.extract_statements(sql)
    if not statements:
        raise RefusedStatement("an empty query")
    for st in statements:
        kind = st.type.name
        text = _LEADING_COMMENTS.sub("", st.query).rstrip().rstrip(";")
        if kind not in READ_STATEMENTS:
            raise RefusedStatement({"VARIABLE_SET": "SET VARIABLE", "MULTI": "a multi-statement (PIVOT …)"}
                                   .get(kind, kind.replace("_", " ")))
        if kind == "EXPLAIN":
            m = _EXPLAIN.match(text)
            if not m:
                raise RefusedStatement("this EXPLAIN")
            check_read_query(con, m["inner"])
        elif kind == "PRAGMA":
            m = _PRAGMA.match(text)
            if not m or m["name"].lower() not in READ_PRAGMAS:
                raise RefusedStatement(f"PRAGMA {m['name'] if m else ''}".rstrip())


def query_dicts(research: Path, sql: str) -> tuple[list[str], list[dict]]:
    """(column names, rows as dicts) of ``sql`` on the research catalog (read-only)."""
    con = connect(research)
    try:
        cur = con.execute(sql)
        cols = [d[0] for d in cur.description]
        return cols, [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()


__all__ = ["RefusedStatement", "build_research_db", "build_restricted_db", "built_root", "check_read_query", "connect",
           "connect_confined", "query_dicts"]
