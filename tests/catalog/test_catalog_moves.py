"""An output folder that moves or is copied keeps a working catalog: the views read the Parquet
files where the catalog is now, never where it was built (issue 20, part 6)."""
from __future__ import annotations

import json
import os
import shutil

import pytest

from mrifoundry.catalog.schema import RESEARCH_TABLES
from mrifoundry.catalog.store import consolidate, write_exam_parts
from mrifoundry.catalog.views import build_research_db, built_root, connect
from mrifoundry.flows.cli import main


def _catalog(root, exam="e1", n=3):
    research = root / "research"
    write_exam_parts(research, exam, {"slices": [
        dict(slice_id=f"{exam}_{i}", series_id=f"s{exam}", exam_id=exam, temporal_index=0, slice_index=i,
             position_mm=float(i), png_path=f"png/{exam}/{i}.png", width=8, height=8, min_value=0.0,
             max_value=1.0) for i in range(n)]})
    for t in RESEARCH_TABLES:
        consolidate(research, t)
    build_research_db(research)
    return research


def _query(out, capsys, sql):
    assert main(["sql", sql, "--out", str(out), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_a_moved_output_folder_is_queried_where_it_is(tmp_path, capsys):
    _catalog(tmp_path / "a")
    os.rename(tmp_path / "a", tmp_path / "b")
    rows = _query(tmp_path / "b", capsys, "SELECT png_file FROM slices ORDER BY slice_id")
    assert [r["png_file"] for r in rows] == [f"{tmp_path / 'b' / 'research'}/png/e1/{i}.png" for i in range(3)]
    # the catalog was rebuilt where it is: a plain DuckDB open (no mrifoundry) works too
    assert built_root(tmp_path / "b" / "research") == f"{(tmp_path / 'b' / 'research').resolve()}/"


def test_a_copy_reads_its_own_files_not_the_originals(tmp_path, capsys):
    _catalog(tmp_path / "orig", n=3)
    shutil.copytree(tmp_path / "orig", tmp_path / "copy")
    _catalog(tmp_path / "orig", exam="e2", n=5)            # the original grows after the copy
    assert _query(tmp_path / "copy", capsys, "SELECT COUNT(*) AS n FROM slices") == [{"n": 3}]
    assert _query(tmp_path / "orig", capsys, "SELECT COUNT(*) AS n FROM slices") == [{"n": 8}]
    shutil.rmtree(tmp_path / "orig")
    assert _query(tmp_path / "copy", capsys, "SELECT COUNT(*) AS n FROM slices") == [{"n": 3}]


def test_fallback_when_the_catalog_cannot_be_rebuilt(tmp_path, monkeypatch):
    import mrifoundry.catalog.views as views
    _catalog(tmp_path / "a")
    os.rename(tmp_path / "a", tmp_path / "b")
    research = tmp_path / "b" / "research"

    def refuse(_research):
        raise PermissionError("read-only mount")
    monkeypatch.setattr(views, "build_research_db", refuse)
    con = connect(research)
    try:
        files = [r[0] for r in con.execute("SELECT png_file FROM slices ORDER BY slice_id").fetchall()]
    finally:
        con.close()
    assert files[0] == f"{research.resolve()}/png/e1/0.png"
    assert built_root(research) == f"{(tmp_path / 'a' / 'research').resolve()}/"   # the file is untouched
