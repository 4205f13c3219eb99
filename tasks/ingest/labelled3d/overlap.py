"""Does a pretraining selection overlap a downstream dataset? (and SQL that removes the overlap)

Two ways a downstream case can also be in the pretraining data:

* **content**: a series whose ``series.content_sha256`` equals the voxel digest of one of the
  case's source channels (``labelled_volumes.content_sha256``; both are
  ``mrifoundry.digest.voxel_sha256`` of the image before resampling);
* **subject**: an exam whose ``exams.subject_key`` equals the case's ``subject_key`` (both
  ``mrifoundry.ids.subject_key`` of the collection's own subject label with the project salt).

The pretraining selection is any SQL on the catalog views that returns ``series_id``.
:func:`exclude_overlap` wraps it to drop every series of an overlapping *patient*: a patient
with any content-matching series anywhere in the catalog, or with an exam of a matching
subject key. Only opaque ids (series_id, exam_id, case_id) are reported.
"""
from __future__ import annotations

from pathlib import Path

from mrifoundry.catalog.views import connect
from mrifoundry.tasks.ingest.labelled2d import check_dataset_id


def _query(query: str) -> str:
    q = query.strip().rstrip(";").strip()
    if not q:
        raise ValueError("empty pretraining query")
    return q


def _ctes(query: str, dataset_id: str) -> str:
    check_dataset_id(dataset_id)  # safe alphabet: it is inlined as a literal
    return (f"_q AS ({_query(query)}),\n"
            f"_dv AS (SELECT case_id, subject_key, unnest(content_sha256) AS sha FROM labelled_volumes "
            f"WHERE dataset_id = '{dataset_id}'),\n"
            "_bad_patients AS (SELECT DISTINCT e.patient_id FROM series s JOIN exams e USING (exam_id) "
            "WHERE e.patient_id IS NOT NULL AND (s.content_sha256 IN (SELECT sha FROM _dv WHERE sha IS NOT NULL) "
            "OR e.subject_key IN (SELECT subject_key FROM _dv WHERE subject_key IS NOT NULL)))")


def exclude_overlap(query: str, dataset_id: str) -> str:
    """SQL returning the rows of ``query`` (which must return ``series_id``) minus every series
    of a patient who overlaps downstream dataset ``dataset_id`` (by content or subject key).

    Raises:
        ValueError: empty query, or an unsafe dataset_id.
    """
    return (f"WITH {_ctes(query, dataset_id)}\n"
            "SELECT * FROM _q WHERE series_id NOT IN (SELECT s.series_id FROM series s JOIN exams e USING (exam_id) "
            "WHERE e.patient_id IN (SELECT patient_id FROM _bad_patients))")


def overlap(research: Path, query: str, dataset_id: str) -> dict:
    """Overlap of the series selected by ``query`` with the cases of ``dataset_id``.

    Returns:
        ``n_query_series``; ``content``: {n_series, series_ids, case_ids, pairs [(series_id,
        case_id)]}; ``subject``: {n_exams, exam_ids, case_ids}; ``n_cases`` overlapping either
        way; ``n_series_excluded``: series of the query that :func:`exclude_overlap` drops.

    Raises:
        KeyError: the dataset is not in the catalog; FileNotFoundError: no catalog.
        ValueError: the query fails or does not return ``series_id``.
    """
    con = connect(Path(research))
    try:
        if not con.execute("SELECT 1 FROM datasets WHERE dataset_id = ?", [dataset_id]).fetchone():
            raise KeyError(f"dataset {dataset_id!r} not in the catalog: run ingest-downstream first")
        head = f"WITH {_ctes(query, dataset_id)},\n" \
               "_qs AS (SELECT s.series_id, s.exam_id, s.content_sha256, e.subject_key FROM series s " \
               "JOIN exams e USING (exam_id) WHERE s.series_id IN (SELECT series_id FROM _q))\n"
        try:
            n_query = con.execute(head + "SELECT count(DISTINCT series_id) FROM _q").fetchone()[0]
        except Exception as e:  # noqa: BLE001 - duckdb's Binder/Parser errors: the user's query
            raise ValueError(f"pretraining query failed (it must return series_id): {e}") from e
        pairs = con.execute(head + "SELECT DISTINCT q.series_id, d.case_id FROM _qs q JOIN _dv d "
                                   "ON q.content_sha256 = d.sha ORDER BY 1, 2").fetchall()
        subj = con.execute(head + "SELECT DISTINCT q.exam_id, d.case_id FROM _qs q JOIN "
                                  "(SELECT DISTINCT case_id, subject_key FROM _dv) d "
                                  "ON q.subject_key = d.subject_key ORDER BY 1, 2").fetchall()
        kept_sql = f"SELECT count(DISTINCT series_id) FROM ({exclude_overlap(query, dataset_id)})"
        kept = con.execute(kept_sql).fetchone()[0]
    finally:
        con.close()
    cases = sorted({c for _, c in pairs} | {c for _, c in subj})
    return {"dataset_id": dataset_id, "n_query_series": int(n_query),
            "content": {"n_series": len({s for s, _ in pairs}), "series_ids": sorted({s for s, _ in pairs}),
                        "case_ids": sorted({c for _, c in pairs}), "pairs": [list(p) for p in pairs]},
            "subject": {"n_exams": len({e for e, _ in subj}), "exam_ids": sorted({e for e, _ in subj}),
                        "case_ids": sorted({c for _, c in subj})},
            "n_cases": len(cases), "case_ids": cases, "n_series_excluded": int(n_query) - int(kept)}


__all__ = ["exclude_overlap", "overlap"]
