"""NIfTI/BIDS ingest on real NIfTI files that nibabel and nilearn ship, laid out as BIDS, with
broken files beside them: reasons per file, conformed volumes, sidecars, PHI, re-runs."""
from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pytest

from mrifoundry.catalog.views import connect
from mrifoundry.params import IngestParams
from mrifoundry.tasks.curation.finalize import finalize_catalog
from mrifoundry.tasks.curation.workspace import Workspace
from mrifoundry.tasks.ingest.collection import ingest_collection
from mrifoundry.sample.bids_corpus import EXPECTED, MNI_T1, PHI, make_bids


def _run(out: Path, root: Path, **kw) -> dict:
    """One worker unless told: which of two same-voxel files is kept must not depend on timing."""
    params = IngestParams(**{kw.pop("layout", "bids"): str(root)}, dataset=kw.pop("dataset", "corpus"),
                          workers=kw.pop("workers", 1), **kw)
    res = ingest_collection(out, params)
    finalize_catalog(Workspace(out))
    return res


def _ids(out: Path, dataset: str = "corpus") -> dict[str, str]:
    """relative source path → series id, from the restricted manifest."""
    t = pq.read_table(out / "restricted" / "ingest" / dataset / "sources.parquet")
    return dict(zip(t["rel"].to_pylist(), t["series_id"].to_pylist()))


def _sql(out: Path, q: str, params=()) -> list[tuple]:
    con = connect(out / "research")
    try:
        return con.execute(q, list(params)).fetchall()
    finally:
        con.close()


def _full_disk_on_the_second_save(monkeypatch):
    """nib.save fails with ENOSPC on its second call; returns the real nib.save."""
    real, calls = nib.save, {"n": 0}

    def full_disk_on_the_second(img, path):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(28, "No space left on device")
        return real(img, path)

    monkeypatch.setattr(nib, "save", full_disk_on_the_second)
    return real


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    base = tmp_path_factory.mktemp("ingest")
    root = make_bids(base / "bids")
    out = base / "out"
    res = _run(out, root, body_part="brain")
    return root, out, res


def test_every_file_gets_its_outcome_in_the_ledger(ingested):
    root, out, res = ingested
    ids = _ids(out)
    ledger = {r[0]: (r[1], r[2]) for r in _sql(out, "SELECT item_id, status, reason FROM stage_results "
                                                    "WHERE stage = 'ingest'")}
    assert res["files"] == len(EXPECTED) and res["outcomes"] == {"done": 4, "rejected": len(EXPECTED) - 4}
    for rel, want in EXPECTED.items():
        if rel in ids:
            assert ledger[ids[rel]] == want, rel
    # the one file outside sub-*/<datatype>/ has no manifest id but a ledger row of its own
    assert sum(1 for v in ledger.values() if v == ("rejected", "not_bids_named")) == 1
    dup = _sql(out, "SELECT message FROM stage_results WHERE item_id = ?", [ids["sub-03/anat/sub-03_T1w.nii.gz"]])
    assert dup == [(f"same voxels as series {ids['sub-01/anat/sub-01_T1w.nii.gz']}",)]


def test_series_rows_read_bids_names_and_inherited_sidecars(ingested):
    _, out, _ = ingested
    ids = _ids(out)
    rows = {r[0]: r[1:] for r in _sql(out, "SELECT series_id, status, sequence_type, repetition_time, echo_time, "
                                           "flip_angle, field_strength, manufacturer, n_timepoints, bids_entities, "
                                           "contrast FROM series")}
    t1 = rows[ids["sub-01/anat/sub-01_T1w.nii.gz"]]
    # own sidecar TR 2.4 s overrides the top-level 2.3 s; TE, flip, field and vendor are inherited
    assert t1[:8] == ("ok", "T1", 2400.0, 2.98, 9.0, 3.0, "Siemens", 1)
    assert rows[ids["sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"]][2] == 2300.0
    t2 = rows[ids["sub-02/ses-1/anat/sub-02_ses-1_acq-moved_T2w.nii"]]
    assert t2[1:4] == ("T2", 3200.0, 90.0) and json.loads(t2[8]) == {"acq": "moved", "datatype": "anat",
                                                                    "suffix": "T2w"}
    bold = rows[ids["sub-01/func/sub-01_task-rest_bold.nii.gz"]]
    assert bold[1] == "BOLD" and bold[7] == 2 and json.loads(bold[8])["task"] == "rest"
    assert rows[ids["sub-04/anat/sub-04_ce-gad_T1w.nii.gz"]][0] == "rejected"
    exams = _sql(out, "SELECT COUNT(*), COUNT(DISTINCT patient_id), min(dataset), min(source), min(body_part) "
                      "FROM exams")
    assert exams == [(5, 4, "corpus", "bids", "brain")]   # sub-02 has two sessions: one patient, two exams


def test_volumes_are_ras_1mm_with_a_clean_header(ingested):
    root, out, _ = ingested
    ids = _ids(out)
    files = dict(_sql(out, "SELECT series_id, nifti_file FROM series WHERE status = 'ok'"))
    assert len(files) == 4
    for f in files.values():
        img = nib.load(f)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert np.allclose(img.header.get_zooms()[:3], 1.0) and img.ndim == 3
        assert img.header["descrip"].tobytes().startswith(b"mrifoundry ingest") and not img.header.extensions
    # the MNI template is RAS 1 mm already: the voxels come through unchanged, on the same grid
    src = nib.as_closest_canonical(nib.load(MNI_T1))
    got = nib.load(files[ids["sub-01/anat/sub-01_T1w.nii.gz"]])
    assert np.allclose(got.affine, src.affine, atol=1e-4)
    assert np.array_equal(np.asarray(got.dataobj, np.float32), np.asarray(src.dataobj, np.float32))
    # a 2 mm SPM image: a 1 mm output voxel that falls on a source voxel centre keeps its value
    src = nib.as_closest_canonical(nib.load(root / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"))
    got = nib.load(files[ids["sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"]])
    s, g = np.asarray(src.dataobj, np.float32), np.asarray(got.dataobj, np.float32)
    for ijk in [(10, 12, 8), (16, 20, 12), (5, 30, 20)]:
        world = src.affine @ [*ijk, 1]
        out_ijk = np.rint(np.linalg.inv(got.affine) @ world)[:3].astype(int)
        assert np.allclose(np.linalg.inv(got.affine) @ world, [*out_ijk, 1], atol=1e-3)
        assert g[tuple(out_ijk)] == pytest.approx(s[ijk], abs=0.51)   # int16 output: rounding only


def test_every_ingested_volume_gets_its_quality_row_and_thumbnail(ingested):
    from mrifoundry.tasks.curation.quality.series import series_quality
    _, out, _ = ingested
    ids = _ids(out)
    files = dict(_sql(out, "SELECT series_id, nifti_file FROM series WHERE status = 'ok'"))
    rows = {r[0]: r[1:] for r in _sql(out, "SELECT series_id, snr, cnr, efc, fber, thumb_file FROM series_quality")}
    assert set(rows) == set(files)
    for sid, f in files.items():
        img = nib.load(f)
        want = series_quality(np.asarray(img.dataobj), img.header.get_zooms(), "axial", None)
        assert rows[sid][:3] == pytest.approx((want["snr"], want["cnr"], want["efc"]), rel=1e-6)
        assert Path(rows[sid][4]).is_file()
    # the MNI template is skull-stripped onto exact zeros: its air holds no energy, FBER is undefined
    mni = rows[ids["sub-01/anat/sub-01_T1w.nii.gz"]]
    assert mni[3] is None and mni[1] > 1 and 0 < mni[2] < 1


def _all_bytes(root: Path):
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            if p.name.endswith(".gz"):
                data = gzip.decompress(data)
            yield p, data


def test_nothing_identifying_from_sidecars_or_labels_reaches_the_research_zone(ingested):
    _, out, _ = ingested
    planted = [v for k, v in PHI.items()] + ["OKONKWO", "ADAEZE", "Saint Brendan", "2019-03-04"]
    for path, data in _all_bytes(out / "research"):
        low = data.lower()
        for v in planted:
            assert v.lower().encode() not in low, (path, v)
    from mrifoundry.tasks.curation.audit.phi_audit import audit_output
    rep = audit_output(out)
    assert not rep.hits and rep.identifiers.get("name", 0) >= 1 and rep.identifiers.get("mrn", 0) >= 1
    assert rep.identifiers.get("source header", 0) >= 1   # 'spm - 3D normalized' etc. of the sources


def test_the_audit_finds_a_sidecar_value_that_leaks(ingested, tmp_path):
    _, out, _ = ingested
    leaky = tmp_path / "out"
    shutil.copytree(out, leaky)
    (leaky / "research" / "qc").mkdir(exist_ok=True)
    (leaky / "research" / "qc" / "note.json").write_text(json.dumps({"site": "Saint Brendan Clinic"}))
    from mrifoundry.tasks.curation.audit.phi_audit import audit_output
    # the manifest names the sidecars by absolute path: the copy still reads the originals
    rep = audit_output(leaky)
    assert {h.kind for h in rep.hits} == {"institution"}


def test_rerun_skips_what_is_done_and_redoes_what_changed(tmp_path):
    root = make_bids(tmp_path / "bids")
    out = tmp_path / "out"
    _run(out, root)
    ids = _ids(out)
    n_series = _sql(out, "SELECT COUNT(*) FROM series")[0][0]
    again = _run(out, root)
    assert again["outcomes"] == {"skipped": len(ids), "rejected": 1}   # the un-named file is re-recorded
    # a deleted output is rebuilt; a repaired file is ingested; nothing is duplicated
    t1 = ids["sub-02/ses-1/anat/sub-02_ses-1_T1w.nii"]
    (f,) = _sql(out, "SELECT nifti_file FROM series WHERE series_id = ?", [t1])[0]
    Path(f).unlink()
    fixed = np.ones((16, 16, 12), np.float32)
    fixed[3, 4, 5] = 7.0
    nib.save(nib.Nifti1Image(fixed, np.eye(4)), root / "sub-03/anat/sub-03_PDw.nii.gz")
    third = _run(out, root)
    assert third["outcomes"]["done"] == 2 and Path(f).exists()
    assert _sql(out, "SELECT COUNT(*) FROM series")[0][0] == n_series
    pd = ids["sub-03/anat/sub-03_PDw.nii.gz"]
    assert _sql(out, "SELECT status, sequence_type FROM series WHERE series_id = ?", [pd]) == [("ok", "PD")]
    assert _sql(out, "SELECT status, attempt FROM stage_results WHERE item_id = ?", [pd]) == [("done", 2)]


def test_a_failed_write_is_failed_in_the_ledger_and_retried(tmp_path, monkeypatch):
    root = make_bids(tmp_path / "bids", broken=False)
    out = tmp_path / "out"
    real = _full_disk_on_the_second_save(monkeypatch)
    first = _run(out, root)
    assert first["outcomes"] == {"done": 3, "failed": 1}
    assert _sql(out, "SELECT reason FROM stage_results WHERE status = 'failed'") == [("disk_full",)]
    monkeypatch.setattr(nib, "save", real)
    second = _run(out, root)
    assert second["outcomes"] == {"skipped": 3, "done": 1}
    assert _sql(out, "SELECT COUNT(*) FROM series WHERE status = 'ok'") == [(4,)]


def test_rerun_failed_redoes_only_the_failed_files(tmp_path, monkeypatch):
    """rerun=failed: the failed file is redone; a new and a changed file wait for rerun=missing."""
    root = make_bids(tmp_path / "bids", broken=False)
    out = tmp_path / "out"
    real = _full_disk_on_the_second_save(monkeypatch)
    assert _run(out, root)["outcomes"] == {"done": 3, "failed": 1}
    monkeypatch.setattr(nib, "save", real)
    (failed,) = _sql(out, "SELECT item_id FROM stage_results WHERE status = 'failed'")[0]
    ids = _ids(out)
    new = root / "sub-04/anat/sub-04_T2w.nii.gz"
    new.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(np.arange(16 * 16 * 12, dtype=np.float32).reshape(16, 16, 12), np.eye(4)), new)
    changed = next(rel for rel, sid in ids.items() if sid != failed)
    img = nib.load(root / changed)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj) + 1, img.affine), root / changed)
    again = _run(out, root, rerun="failed")
    assert again["outcomes"] == {"done": 1, "skipped": 4}
    assert _sql(out, "SELECT status FROM stage_results WHERE item_id = ?", [failed]) == [("done",)]
    new_id = _ids(out)["sub-04/anat/sub-04_T2w.nii.gz"]
    assert _sql(out, "SELECT COUNT(*) FROM stage_results WHERE item_id = ?", [new_id]) == [(0,)]
    assert _sql(out, "SELECT COUNT(*) FROM series WHERE status = 'ok'") == [(4,)]
    last = _run(out, root)   # missing: the new and the changed file
    assert last["outcomes"] == {"done": 2, "skipped": 3}
    assert _sql(out, "SELECT COUNT(*) FROM series WHERE status = 'ok'") == [(5,)]


def test_a_plain_nifti_folder_goes_in_with_subjects_from_folders(tmp_path):
    root = tmp_path / "coll"
    (root / "subjA").mkdir(parents=True)
    (root / "subjB" / "visit2").mkdir(parents=True)
    shutil.copyfile(MNI_T1, root / "subjA" / "t1_mprage.nii.gz")
    (root / "subjA" / "t1_mprage.json").write_text(json.dumps({"SeriesDescription": "T1 MPRAGE SAG",
                                                                "RepetitionTime": 2.3, "EchoTime": 0.003}))
    from nibabel.testing import data_path
    shutil.copyfile(Path(data_path) / "anatomical.nii", root / "subjB" / "visit2" / "flair.nii")
    out = tmp_path / "out"
    res = _run(out, root, layout="nifti", dataset="plain")
    assert res["outcomes"] == {"done": 2}
    rows = _sql(out, "SELECT e.patient_id, e.source, r.sequence_type, r.series_description, r.bids_entities "
                     "FROM series r JOIN exams e USING (exam_id) ORDER BY r.sequence_type")
    assert [r[1:] for r in rows] == [("nifti", "OTHER", None, None), ("nifti", "T1", "T1 MPRAGE SAG", None)]
    assert rows[0][0] != rows[1][0]


def test_the_same_voxels_are_refused_across_collections(ingested, tmp_path):
    _, out, _ = ingested
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    root = tmp_path / "other"
    (root / "x").mkdir(parents=True)
    shutil.copyfile(MNI_T1, root / "x" / "mni.nii.gz")
    res = _run(copy, root, layout="nifti", dataset="other")
    assert res["outcomes"] == {"rejected": 1}
    assert _sql(copy, "SELECT reason FROM series r JOIN exams e USING (exam_id) WHERE e.dataset = 'other'") == \
        [("duplicate_content",)]


def test_bad_parameters_are_refused(tmp_path):
    with pytest.raises(ValueError, match="dataset"):
        ingest_collection(tmp_path, IngestParams(bids=str(tmp_path), dataset="bad name/"))
    with pytest.raises(ValueError, match="exactly one"):
        IngestParams(bids=str(tmp_path), nifti=str(tmp_path))
    with pytest.raises(ValueError, match="rerun"):
        IngestParams(bids=str(tmp_path), rerun="changed")
    with pytest.raises(FileNotFoundError, match="not a BIDS dataset"):
        ingest_collection(tmp_path, IngestParams(bids=str(tmp_path), dataset="x"))


def test_two_worker_threads_decide_every_file_as_one_does(ingested, tmp_path):
    root, out, _ = ingested
    res = _run(tmp_path / "out", root, workers=2)
    assert res["outcomes"] == {"done": 4, "rejected": len(EXPECTED) - 4}
    ids = _ids(tmp_path / "out")
    got = {r[0]: (r[1], r[2]) for r in _sql(tmp_path / "out", "SELECT item_id, status, reason FROM stage_results")}
    twins = ["sub-01/anat/sub-01_T1w.nii.gz", "sub-03/anat/sub-03_T1w.nii.gz"]
    for rel, want in EXPECTED.items():
        if rel in ids and rel not in twins:
            assert got[ids[rel]] == want, rel
    # which twin is first depends on thread timing; exactly one is kept
    assert sorted(got[ids[t]] for t in twins) == [("done", None), ("rejected", "duplicate_content")]


def test_an_annexed_file_whose_content_is_missing_gets_a_reason(tmp_path):
    root = make_bids(tmp_path / "bids", broken=False)
    link = root / "sub-02/ses-1/anat/sub-02_ses-1_FLAIR.nii.gz"
    link.symlink_to(root / ".git/annex/objects/XX/missing.nii.gz")   # DataLad before `datalad get`
    out = tmp_path / "out"
    res = _run(out, root)
    assert res["outcomes"] == {"done": 4, "rejected": 1}
    sid = _ids(out)["sub-02/ses-1/anat/sub-02_ses-1_FLAIR.nii.gz"]
    (reason, msg), = _sql(out, "SELECT reason, message FROM stage_results WHERE item_id = ?", [sid])
    assert reason == "unreadable_nifti" and "broken link" in msg
