"""``mrifoundry sql`` stays in the research zone: read queries over the catalog views (their
Parquet files under research/, feature sets included) work; writing a file, reading any file
outside research/ (the restricted zone included), ATTACH and SET are refused with one line
on stderr and exit 2; ``--unrestricted`` lifts it."""
from __future__ import annotations

import json

import duckdb
import pyarrow.parquet as pq
import pytest

from mrifoundry.catalog.schema import FEATURES, RESEARCH_TABLES, to_arrow
from mrifoundry.catalog.store import consolidate, features_file, write_exam_parts, write_parquet_atomic
from mrifoundry.catalog.views import RefusedStatement, build_research_db, check_read_query, connect_confined
from mrifoundry.flows.cli import main
from mrifoundry.errors import EXIT_USAGE


def _slices(exam, n):
    return [dict(slice_id=f"{exam}_{i}", series_id=f"s{exam}", exam_id=exam, temporal_index=0, slice_index=i,
                 position_mm=float(i), png_path=f"png/{exam}/{i}.png", width=8, height=8, min_value=0.0,
                 max_value=1.0) for i in range(n)]


@pytest.fixture
def out(tmp_path):
    """OUT with a tiny research catalog (3 slices, one feature set) and a planted restricted file."""
    root = tmp_path / "out"
    research = root / "research"
    write_exam_parts(research, "e1", {"slices": _slices("e1", 3)})
    for t in RESEARCH_TABLES:
        consolidate(research, t)
    write_parquet_atomic(to_arrow(FEATURES, [dict(feature_set="fs1", slice_id="e1_0", series_id="se1", exam_id="e1",
                                                  embedding=[0.5, 0.25], grid_path=None, grid_index=None)]),
                         features_file(research, "fs1"))
    build_research_db(research)
    (root / "restricted").mkdir()
    pq.write_table(duckdb.sql("SELECT 'MRN0001' AS patient_mrn").to_arrow_table(),
                   root / "restricted" / "selection.parquet")
    return root


def _sql(out, query, *extra):
    return main(["sql", query, "--out", str(out), *extra])


def _refused(capsys, rc):
    cap = capsys.readouterr()
    assert rc == EXIT_USAGE
    err = cap.err.strip()
    assert err.startswith("mrifoundry sql: ") and "\n" not in err, cap.err
    assert "--unrestricted" in err and "Traceback" not in cap.err
    return err


def test_select_over_views_works(out, capsys):
    assert _sql(out, "SELECT COUNT(*) AS n FROM slices", "--format", "json") == 0
    assert json.loads(capsys.readouterr().out) == [{"n": 3}]
    # a view over research/features/*/features.parquet, and a training-slices join
    assert _sql(out, "SELECT slice_id FROM features WHERE feature_set = 'fs1'", "--format", "csv") == 0
    assert capsys.readouterr().out.split() == ["slice_id", "e1_0"]
    for q in ("DESCRIBE slices", "SHOW TABLES", "EXPLAIN SELECT * FROM slices", "PRAGMA table_info('slices')",
              "SUMMARIZE slices", f"SELECT COUNT(*) FROM read_parquet('{out}/research/catalog/slices/*.parquet')"):
        assert _sql(out, q) == 0, q
        assert "Traceback" not in capsys.readouterr().err


def test_copy_to_file_is_refused_and_writes_nothing(out, capsys):
    for target in (out / "research" / "dump.csv", out / "dump.csv"):
        err = _refused(capsys, _sql(out, f"COPY (SELECT * FROM slices) TO '{target}'"))
        assert "COPY" in err
        assert not target.exists()
    # EXPLAIN ANALYZE would execute the COPY
    _refused(capsys, _sql(out, f"EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}/research/x.csv'"))
    assert not (out / "research" / "x.csv").exists()
    _refused(capsys, _sql(out, f"EXPORT DATABASE '{out}/research/export'"))
    assert not (out / "research" / "export").exists()


def test_file_outside_research_is_refused(out, tmp_path, capsys):
    other = tmp_path / "elsewhere.csv"
    other.write_text("a,b\n1,2\n")
    for path in (other, "/etc/passwd"):
        err = _refused(capsys, _sql(out, f"SELECT * FROM read_csv('{path}')"))
        assert "research" in err


def test_restricted_zone_is_refused(out, capsys):
    planted = out / "restricted" / "selection.parquet"
    for q in (f"SELECT * FROM read_parquet('{planted}')",
              f"SELECT * FROM read_parquet('{out}/research/../restricted/selection.parquet')",
              f"SELECT * FROM glob('{out}/restricted/*')"):
        _refused(capsys, _sql(out, q))
    assert "MRN0001" not in capsys.readouterr().out


def test_attach_install_and_set_are_refused(out, tmp_path, capsys):
    for q in (f"ATTACH '{tmp_path}/x.duckdb' AS x", "INSTALL httpfs", "LOAD httpfs",
              "SET enable_external_access = true", "RESET enable_external_access",
              "SET allowed_directories = ['/']", "SET lock_configuration = false",
              "PRAGMA enable_profiling", "CALL pragma_version()", "CREATE TEMP TABLE t AS SELECT 1",
              "SELECT 1; SET enable_external_access = true"):
        _refused(capsys, _sql(out, q))
    assert not (tmp_path / "x.duckdb").exists()


def test_configuration_is_locked_on_the_connection(out):
    # even a caller that skips check_read_query cannot switch access back on
    con = connect_confined(out / "research")
    try:
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access = true")
        with pytest.raises(duckdb.PermissionException):
            con.execute(f"SELECT * FROM read_parquet('{out}/restricted/selection.parquet')")
        with pytest.raises(RefusedStatement, match="SET"):
            check_read_query(con, "SELECT 1; SET threads = 1")
    finally:
        con.close()


def test_a_bad_query_is_one_line(out, capsys):
    rc = _sql(out, "SELECT nope FROM slices")
    cap = capsys.readouterr()
    assert rc == EXIT_USAGE and cap.err.count("\n") == 1 and "Traceback" not in cap.err


def test_unrestricted_reads_the_restricted_zone(out, capsys):
    q = f"SELECT patient_mrn FROM read_parquet('{out}/restricted/selection.parquet')"
    assert _sql(out, q, "--unrestricted", "--format", "csv") == 0
    assert capsys.readouterr().out.split() == ["patient_mrn", "MRN0001"]
