"""Catalog overlap check: pretraining series vs a downstream dataset, by voxel digest and subject key."""
from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from mrifoundry.catalog.schema import RESEARCH_TABLES
from mrifoundry.catalog.store import consolidate, write_exam_parts
from mrifoundry.catalog.views import query_dicts
from mrifoundry.digest import voxel_sha256
from mrifoundry.ids import subject_key
from mrifoundry.tasks.ingest.labelled3d import ingest_downstream
from mrifoundry.tasks.ingest.labelled3d.overlap import exclude_overlap, overlap
from tests.ingest.test_labelled3d_ingest import SALT, labels, save, volume

QUERY = "SELECT series_id FROM series WHERE status = 'ok'"


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ov")
    root = tmp / "msd"
    for case, seed in (("c0", 0), ("c1", 1), ("07", 2)):
        save(volume(seed), root / "imagesTr" / f"{case}.nii.gz")  # LAS int16
        save(labels(), root / "labelsTr" / f"{case}.nii.gz")
    # the pretraining copy of c0: the same voxels stored as RAS float32, as curation would digest them
    canon = nib.as_closest_canonical(nib.load(root / "imagesTr" / "c0.nii.gz"))
    same = voxel_sha256(nib.Nifti1Image(np.asarray(canon.dataobj, dtype=np.float32), canon.affine))
    other = voxel_sha256(nib.Nifti1Image(volume(5).astype(np.float32), np.eye(4)))
    research = tmp / "out" / "research"
    exams = {  # exam: (patient, subject_key, [(series, status, digest)])
        "e1": ("pA", None, [("s1", "ok", same), ("s2", "ok", other)]),
        "e2": ("pB", None, [("s3", "ok", other)]),
        "e3": ("pC", subject_key("07", SALT), [("s4", "ok", None)]),  # a BIDS sub-07, no digest
        "e4": ("pA", None, [("s5", "ok", None)]),                      # pA's other exam
        "e5": ("pD", subject_key("99", SALT), [("s6", "ok", other), ("s7", "rejected", same)]),
    }
    for exam, (patient, key, series) in exams.items():
        write_exam_parts(research, exam, {
            "exams": [{"exam_id": exam, "patient_id": patient, "subject_key": key, "n_series": len(series)}],
            "series": [{"series_id": s, "exam_id": exam, "status": st, "content_sha256": d} for s, st, d in series]})
    for table in RESEARCH_TABLES:
        consolidate(research, table)
    ingest_downstream(research, root, "down", salt=SALT, voxel_size_mm=None)
    return research


def test_overlap_by_content_and_by_subject(research):
    res = overlap(research, QUERY, "down")
    assert res["n_query_series"] == 6  # s7 is rejected: not in the query
    assert res["content"] == {"n_series": 1, "series_ids": ["s1"], "case_ids": ["c0"], "pairs": [["s1", "c0"]]}
    assert res["subject"] == {"n_exams": 1, "exam_ids": ["e3"], "case_ids": ["07"]}
    assert res["n_cases"] == 2 and res["case_ids"] == ["07", "c0"]
    # pA (content match: s1, its other series s2 and its other exam's s5), pC (subject: s4) and pD,
    # whose rejected s7 (outside the query) holds c0's voxels: its s6 goes too
    assert res["n_series_excluded"] == 5


def test_exclude_overlap_sql_keeps_only_clean_patients(research):
    _, rows = query_dicts(research, exclude_overlap(QUERY, "down"))
    assert sorted(r["series_id"] for r in rows) == ["s3"]
    # any query returning series_id: a CTE, extra columns, a trailing semicolon
    q = "WITH x AS (SELECT series_id, exam_id FROM series) SELECT series_id, exam_id FROM x;"
    cols, rows = query_dicts(research, exclude_overlap(q, "down"))
    assert cols == ["series_id", "exam_id"]
    assert sorted(r["series_id"] for r in rows) == ["s3"]


def test_a_query_without_overlap(research):
    res = overlap(research, "SELECT series_id FROM series WHERE exam_id = 'e2'", "down")
    assert res["n_query_series"] == 1 and res["n_cases"] == 0 and res["n_series_excluded"] == 0
    assert res["content"]["series_ids"] == [] and res["subject"]["exam_ids"] == []


def test_errors(research):
    with pytest.raises(KeyError, match="not in the catalog"):
        overlap(research, QUERY, "nope")
    with pytest.raises(ValueError, match="must return series_id"):
        overlap(research, "SELECT exam_id FROM exams", "down")
    with pytest.raises(ValueError, match="dataset_id"):
        exclude_overlap(QUERY, "x'; DROP")
    with pytest.raises(ValueError, match="empty"):
        exclude_overlap(" ; ", "down")
