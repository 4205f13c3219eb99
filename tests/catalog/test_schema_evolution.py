"""A corpus outlives the code that curated it: an output folder written before a column was added
to a table takes new exams and keeps its old rows (the new columns null for them)."""
from __future__ import annotations

import pyarrow as pa
import pytest
import pyarrow.parquet as pq

from mrifoundry.catalog.schema import SERIES
from mrifoundry.catalog.store import consolidate, drop_exams, table_file, write_exam_parts


def test_old_table_without_new_columns_takes_new_parts(tmp_path):
    research = tmp_path / "research"
    old_names = [n for n in SERIES.names if n not in ("b_values", "sidecar_path", "phase_encoding_direction")]
    old = pa.table({n: pa.array(["s_old" if n == "series_id" else "e_old" if n == "exam_id" else None],
                                SERIES.schema.field(n).type) for n in old_names})
    path = table_file(research, SERIES)
    path.parent.mkdir(parents=True)
    pq.write_table(old, path)
    write_exam_parts(research, "e_new", {"series": [dict(series_id="s_new", exam_id="e_new", status="ok",
                                                         b_values="0,1000")]})
    assert consolidate(research, SERIES) == 2
    rows = {r["series_id"]: r for r in pq.read_table(path).to_pylist()}
    assert rows["s_new"]["b_values"] == "0,1000" and rows["s_old"]["b_values"] is None
    assert pq.read_schema(path).names == SERIES.names
    assert drop_exams(research, ["e_old"], tables=(SERIES,)) == {"series": 1}


@pytest.mark.parametrize("old_first", [True, False])
def test_parts_of_an_older_schema_merge_with_current_ones(tmp_path, old_first):
    """A run resumed by newer code: its pending parts have two schemas. Whichever sorts first, the
    merge keeps every column of the current parts and nulls the older parts' missing ones."""
    research = tmp_path / "research"
    old_names = [n for n in SERIES.names if n not in ("b_values", "sidecar_path")]
    old = pa.table({n: pa.array(["s_old" if n == "series_id" else "e_old" if n == "exam_id" else None],
                                SERIES.schema.field(n).type) for n in old_names})
    parts = research / "catalog" / "_parts" / "series"
    parts.mkdir(parents=True)
    pq.write_table(old, parts / ("a_old.parquet" if old_first else "z_old.parquet"))
    new_id = "z_new" if old_first else "a_new"
    write_exam_parts(research, new_id, {"series": [dict(series_id="s_new", exam_id=new_id, status="ok",
                                                        b_values="0,1000")]})
    assert consolidate(research, SERIES) == 2
    rows = {r["series_id"]: r for r in pq.read_table(table_file(research, SERIES)).to_pylist()}
    assert rows["s_new"]["b_values"] == "0,1000" and rows["s_new"]["status"] == "ok"
    assert rows["s_old"]["b_values"] is None
    assert [r["exam_id"] for r in pq.read_table(table_file(research, SERIES)).to_pylist()] == sorted(rows[s]["exam_id"] for s in rows)
