"""Parquet writers: per-exam parts, then consolidation into one file per table.

Write path (crash-safe, append-only, never duplicating):
1. the ``catalog`` stage writes ``_parts/<table>/<exam_id>.parquet`` (temp + rename), so
   re-curating an exam replaces its part;
2. :func:`consolidate` rewrites ``<table>/<table>.parquet`` as
   (old rows whose exam has no new part) ∪ (new parts), temp + rename, then deletes the
   merged parts. A crash at any point leaves either the old or the new file, and parts
   that are merged again replace, not add, their exam's rows.
"""
from __future__ import annotations

import contextlib
import fcntl
import shutil
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute  # noqa: F401 - pa.compute in drop_exams
import pyarrow.parquet as pq

from mrifoundry.catalog.schema import (DERIVED_TABLES, EXAMS, FEATURES, RESEARCH_TABLES, SERIES, SERIES_QUALITY, SLICES,
                                      VOLUME_FEATURES, Table,
                            to_arrow)
from mrifoundry.atomic import atomic_path
from mrifoundry.duck import quiet_connect


def catalog_dir(research: Path) -> Path:
    return research / "catalog"


def table_file(research: Path, table: Table) -> Path:
    return catalog_dir(research) / table.name / f"{table.name}.parquet"


def write_parquet_atomic(tbl: pa.Table, path: Path) -> None:
    """``tbl`` as zstd Parquet at ``path``, whole or not at all (:func:`mrifoundry.atomic.atomic_path`)."""
    with atomic_path(path) as tmp:
        pq.write_table(tbl, tmp, compression="zstd")


def write_exam_parts(research: Path, exam_id: str, rows: dict[str, list[dict]]) -> list[Path]:
    """Write one exam's rows of every research table (except the ledger) as parts."""
    written = []
    for table in RESEARCH_TABLES:
        if table.name not in rows:
            continue
        path = catalog_dir(research) / "_parts" / table.name / f"{exam_id}.parquet"
        write_parquet_atomic(to_arrow(table, rows[table.name]), path)
        written.append(path)
    return written


def conform(tbl: pa.Table, table: Table) -> pa.Table:
    """``tbl`` in ``table``'s schema: columns a newer version added are null for rows an older one
    wrote (a corpus outlives the code that curated it), columns in the schema's order and types."""
    columns = [tbl.column(f.name).cast(f.type) if f.name in tbl.column_names else pa.nulls(tbl.num_rows, f.type)
               for f in table.schema]
    return pa.Table.from_arrays(columns, schema=table.schema)


#: DuckDB's memory for the merge's sort: beyond it the sort spills to a temp folder next to the
#: table, so a Duke-size slices table (≈ 7 M rows) merges in bounded memory
MERGE_MEMORY = "256MB"
#: rows per record batch (and Parquet row group) of the merged file
MERGE_BATCH_ROWS = 131_072


def _sql_list(paths) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def _merge(research: Path, table: Table, parts: list[Path], target: Path, by_name: bool) -> int:
    """The merge of :func:`consolidate`; ``by_name``: union the parts' columns by name."""
    source = f"SELECT * FROM read_parquet({_sql_list(parts)}{', union_by_name = true' if by_name else ''})"
    if target.exists():
        source += (f" UNION ALL BY NAME SELECT * FROM read_parquet({_sql_list([target])}) "
                   "WHERE exam_id NOT IN (SELECT exam_id FROM new_exams)")
    key = ", ".join(f'"{k}"' for k in dict.fromkeys(("exam_id", *table.key)) if k in table.names)
    spill = catalog_dir(research) / f".merge-{table.name}"
    n = 0
    con = quiet_connect()
    try:
        con.execute(f"SET memory_limit = '{MERGE_MEMORY}'")
        con.execute(f"SET temp_directory = '{spill}'")
        con.register("new_exams", pa.table({"exam_id": pa.array(sorted({p.stem for p in parts}), pa.string())}))
        reader = con.sql(f"SELECT * FROM ({source}) ORDER BY {key}").fetch_record_batch(MERGE_BATCH_ROWS)
        with atomic_path(target) as tmp, pq.ParquetWriter(tmp, table.schema, compression="zstd") as out:
            for batch in reader:
                out.write_table(conform(pa.Table.from_batches([batch]), table))
                n += batch.num_rows
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)
    return n


def consolidate(research: Path, table: Table) -> int:
    """Merge pending parts of ``table`` into its Parquet file; return its row count.

    DuckDB reads the parts and the old file's other exams, sorts them by the table's key (spilling
    beyond :data:`MERGE_MEMORY`) and streams record batches, each conformed to the schema, into
    the new file: no table is ever whole in memory."""
    parts_dir = catalog_dir(research) / "_parts" / table.name
    parts = sorted(parts_dir.glob("*.parquet")) if parts_dir.exists() else []
    target = table_file(research, table)
    if not parts:
        if not target.exists():
            write_parquet_atomic(table.schema.empty_table(), target)
        return pq.read_metadata(target).num_rows
    # DuckDB takes the first file's columns for all (a later file lacking one is an error, and its
    # extra columns would be dropped): parts of an older schema (a run resumed by newer code) are
    # aligned by name, which reads every part's schema first (≈ 14 KB of memory a part)
    by_name = not set(table.names) <= set(pq.read_schema(parts[0]).names)
    try:
        n = _merge(research, table, parts, target, by_name)
    except duckdb.Error:
        if by_name:
            raise
        n = _merge(research, table, parts, target, by_name=True)
    for p in parts:
        p.unlink(missing_ok=True)
    return n


def drop_exams(research: Path, exam_ids, keep_dir: Path | None = None,
               tables: tuple[Table, ...] = (EXAMS, SERIES, SLICES, SERIES_QUALITY)) -> dict[str, int]:
    """Remove every row of ``exam_ids`` from ``tables``: their pending parts and their rows in the
    consolidated Parquet files (rewritten atomically). With ``keep_dir`` the removed rows are kept
    there, not lost: parts move to ``keep_dir/_parts/<table>/<exam_id>.parquet`` and consolidated
    rows are written to ``keep_dir/<table>/<exam_id>.parquet`` (the PHI quarantine,
    tasks/curation/audit/quarantine.py). Rebuild the views afterwards
    (``tasks.curation.finalize.finalize_catalog``). Returns the rows removed per table."""
    exams = sorted(set(exam_ids))
    removed: dict[str, int] = {}
    if not exams:
        return removed
    for table in tables:
        n = 0
        for exam in exams:
            part = catalog_dir(research) / "_parts" / table.name / f"{exam}.parquet"
            if part.exists():
                n += pq.read_metadata(part).num_rows
                if keep_dir is not None:
                    dest = Path(keep_dir) / "_parts" / table.name / part.name
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(str(part), str(dest))
                else:
                    part.unlink()
        target = table_file(research, table)
        if target.exists():
            tbl = pq.read_table(target, schema=table.schema)
            hit = pa.compute.is_in(tbl.column("exam_id"), value_set=pa.array(exams, pa.string()))
            gone = tbl.filter(hit)
            if gone.num_rows:
                if keep_dir is not None:
                    for exam in sorted(set(gone.column("exam_id").to_pylist())):
                        rows = gone.filter(pa.compute.equal(gone.column("exam_id"), exam))
                        write_parquet_atomic(rows, Path(keep_dir) / table.name / f"{exam}.parquet")
                write_parquet_atomic(tbl.filter(pa.compute.invert(hit)), target)
                n += gone.num_rows
        removed[table.name] = n
    return removed


def write_table(research: Path, table: Table, tbl: pa.Table) -> None:
    """Replace a whole table (used for the ledger export)."""
    write_parquet_atomic(tbl.cast(table.schema), table_file(research, table))


def derived_file(research: Path, table: Table) -> Path:
    """File of a derived table (models, feature_sets) — features live per set, see features_file."""
    return table_file(research, table)


def features_file(research: Path, feature_set: str, unit: str = "slice") -> Path:
    """A feature set's vectors: ``features.parquet`` (slices) or ``volume_features.parquet``."""
    name = {"slice": "features.parquet", "volume": "volume_features.parquet"}[unit]
    return research / "features" / feature_set / name


def ensure_derived_tables(research: Path) -> None:
    """Empty files for the derived tables, so their views exist before any downstream run."""
    for table in DERIVED_TABLES:
        path = table_file(research, table)
        if not path.exists():
            write_parquet_atomic(table.schema.empty_table(), path)


@contextlib.contextmanager
def derived_lock(research: Path):
    """Serialise writers of the derived tables (pretrain and extract-features may run at once)."""
    path = catalog_dir(research) / ".derived.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def upsert(research: Path, table: Table, rows: list[dict]) -> int:
    """Replace the rows of ``table`` with the same key as ``rows``, append the rest; atomic.

    Call under :func:`derived_lock`. Returns the table's row count.
    """
    if table is FEATURES or table is VOLUME_FEATURES:
        raise ValueError("features are written per feature set (features_file), not upserted")
    path = table_file(research, table)
    new = to_arrow(table, rows)
    if path.exists():
        old = pq.read_table(path, schema=table.schema)
        keys = {tuple(r[k] for k in table.key) for r in rows}
        keep = [i for i, r in enumerate(old.select(list(table.key)).to_pylist())
                if tuple(r[k] for k in table.key) not in keys]
        new = pa.concat_tables([old.take(pa.array(keep, pa.int64())), new])
    write_parquet_atomic(new, path)
    return new.num_rows
