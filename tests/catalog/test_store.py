import duckdb
import pyarrow.parquet as pq

from mrifoundry.catalog.schema import EXAMS, SLICES
from mrifoundry.catalog.store import consolidate, table_file, write_exam_parts


def _slices(exam, n):
    return [dict(slice_id=f"{exam}_{i}", series_id=f"s{exam}", exam_id=exam, temporal_index=0, slice_index=i,
                 position_mm=float(i), png_path=f"png/{exam}/{i}.png", width=8, height=8, min_value=0.0,
                 max_value=1.0) for i in range(n)]


def test_parts_merge_without_duplicates(tmp_path):
    write_exam_parts(tmp_path, "e1", {"slices": _slices("e1", 3)})
    write_exam_parts(tmp_path, "e2", {"slices": _slices("e2", 2)})
    assert consolidate(tmp_path, SLICES) == 5
    # re-curating e1 (now 4 slices) replaces its rows; e2 untouched
    write_exam_parts(tmp_path, "e1", {"slices": _slices("e1", 4)})
    assert consolidate(tmp_path, SLICES) == 6
    # merging the same part twice (crash after rename, before part deletion) adds nothing
    write_exam_parts(tmp_path, "e2", {"slices": _slices("e2", 2)})
    assert consolidate(tmp_path, SLICES) == 6
    ids = duckdb.sql(f"SELECT slice_id FROM read_parquet('{table_file(tmp_path, SLICES)}')").fetchall()
    assert len(ids) == len(set(ids)) == 6
    assert not list((tmp_path / "catalog" / "_parts" / "slices").glob("*.parquet"))


def test_schema_descriptions_in_parquet(tmp_path):
    assert consolidate(tmp_path, EXAMS) == 0
    schema = pq.read_schema(table_file(tmp_path, EXAMS))
    assert all(f.metadata and f.metadata[b"description"] for f in schema)
