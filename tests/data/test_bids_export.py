"""The catalog as BIDS: the export passes the BIDS validator and goes back in through ingest."""
from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from mrifoundry.catalog.views import connect
from mrifoundry.params import IngestParams
from mrifoundry.tasks.curation.finalize import finalize_catalog
from mrifoundry.tasks.ingest.collection import ingest_collection
from mrifoundry.tasks.curation.workspace import Workspace
from mrifoundry.tasks.data.bids_export import export_bids, validate_bids
from mrifoundry.sample.bids_corpus import make_bids


def _rows(research, sql):
    con = connect(research)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _ingest(out, root, dataset):
    ingest_collection(out, IngestParams(bids=str(root), dataset=dataset, workers=1))
    finalize_catalog(Workspace(out))
    return out / "research"


def test_the_test_corpus_itself_is_valid_bids(tmp_path):
    rep = validate_bids(make_bids(tmp_path / "ds", broken=False))
    assert rep["errors"] == [] and rep["exit_code"] == 0


def test_the_validator_sees_an_invalid_dataset(tmp_path):
    root = make_bids(tmp_path / "ds", broken=False)
    (root / "dataset_description.json").unlink()     # required file
    rep = validate_bids(root)
    assert rep["errors"] and rep["exit_code"] != 0


def test_an_ingested_collection_exports_as_valid_bids_and_comes_back(tmp_path):
    research = _ingest(tmp_path / "out", make_bids(tmp_path / "ds"), "corpus")
    res = export_bids(research, "SELECT series_id FROM series", tmp_path / "export")
    assert res["n_files"] == 3 and res["skipped"] == {"BOLD": 1}   # BOLD needs a task the catalog lacks
    assert validate_bids(tmp_path / "export")["errors"] == []
    back = _ingest(tmp_path / "out2", tmp_path / "export", "back")
    before = sorted(_rows(research, "SELECT sequence_type, repetition_time, echo_time, nifti_shape FROM series "
                                    "WHERE status = 'ok' AND sequence_type <> 'BOLD'"))
    after = sorted(_rows(back, "SELECT sequence_type, repetition_time, echo_time, nifti_shape FROM series"))
    assert before == after
    # exported voxels are the catalog's volumes, and the subject folders are the opaque patient ids
    pid = {r[0] for r in _rows(research, "SELECT patient_id FROM exams")}
    subs = {p.name[4:] for p in (tmp_path / "export").glob("sub-*")}
    assert subs <= pid and len(subs) == 2
    (src,) = _rows(research, "SELECT nifti_file FROM series WHERE sequence_type = 'T2'")[0]
    (dst,) = list((tmp_path / "export").rglob("*_T2w.nii.gz"))
    assert np.array_equal(np.asarray(nib.load(src).dataobj), np.asarray(nib.load(dst).dataobj))
    side = json.loads(dst.with_name(dst.name.replace(".nii.gz", ".json")).read_text())
    assert side["RepetitionTime"] == pytest.approx(3.2) and side["EchoTime"] == pytest.approx(0.09)


def test_a_curated_dicom_catalog_exports_as_valid_bids(volume_catalog, tmp_path):
    res = export_bids(volume_catalog, "SELECT series_id FROM series WHERE status = 'ok'", tmp_path / "export")
    n_anat = _rows(volume_catalog, "SELECT COUNT(*) FROM series WHERE status = 'ok' AND nifti_path IS NOT NULL "
                                   "AND sequence_type IN ('T1', 'T2', 'PD', 'FLAIR', 'GRE')")[0][0]
    assert res["n_files"] == n_anat > 0
    rep = validate_bids(tmp_path / "export")
    assert rep["errors"] == [], rep
    # curated series carry their voxel digest too (the overlap check joins on it), one per image
    digests = _rows(volume_catalog, "SELECT content_sha256 FROM series WHERE status = 'ok' AND nifti_path IS NOT NULL")
    assert digests and all(d[0] and len(d[0]) == 32 for d in digests) and len({d[0] for d in digests}) == len(digests)


def test_an_export_refuses_a_non_empty_folder_and_a_query_without_series(tmp_path):
    research = _ingest(tmp_path / "out", make_bids(tmp_path / "ds", broken=False), "c")
    with pytest.raises(ValueError, match="series_id"):
        export_bids(research, "SELECT exam_id FROM exams", tmp_path / "e")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(ValueError, match="not empty"):
        export_bids(research, "SELECT series_id FROM series", tmp_path / "busy")
