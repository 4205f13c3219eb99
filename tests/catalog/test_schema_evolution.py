"""A corpus outlives the code that curated it: an output folder written before a column was added
to a table takes new exams and keeps its old rows (the new columns null for them)."""
from __future__ import annotations

import pyarrow as pa
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
