"""Downstream datasets under a real Prefect server: a BraTS-style folder in by one flow, and a
downstream task built from pretraining images, which the overlap check finds and pretraining drops."""
from __future__ import annotations


import numpy as np
import nibabel as nib
import pytest

from mrifoundry.catalog.views import connect
from mrifoundry.sample.bids_corpus import make_bids

pytestmark = [pytest.mark.prefect_server]


def _sql(out, q, params=()):
    con = connect(out / "research")
    try:
        return con.execute(q, list(params)).fetchall()
    finally:
        con.close()


def test_a_brats_style_folder_goes_in_by_one_flow(prefect_server, tmp_path):
    from mrifoundry.flows.downstream import ingest_downstream_flow
    from mrifoundry.sample.brats_like import make_brats_like_dataset
    root = make_brats_like_dataset(tmp_path / "brats", n_cases=3, seed=0)
    out = tmp_path / "out"
    res = ingest_downstream_flow(root=str(root), dataset_id="brats-like", out=str(out), voxel_size_mm=None,
                                 labels={"whole_tumor": [1, 2, 4], "tumor_core": [1, 4], "enhancing": [4]},
                                 split=(0.34, 0.33, 0.33), folds=3)
    assert res["layout"] == "brats" and res["n_volumes"] == 3 and res["channels"] == ["t1", "t1ce", "t2", "flair"]
    rows = _sql(out, "SELECT case_id, n_channels, split, label_file FROM labelled_volumes "
                     "WHERE dataset_id = 'brats-like' ORDER BY case_id")
    assert [r[0] for r in rows] == [f"BraTS2021_{i:05d}" for i in range(3)] and {r[1] for r in rows} == {4}
    assert sorted(r[2] for r in rows) == ["test", "train", "val"]
    # nested regions: whole tumour ⊇ tumour core ⊇ enhancing, as values 1 ≤ 2 ≤ 3 of one label map
    got = np.asarray(nib.as_closest_canonical(nib.load(rows[0][3])).dataobj)
    src = np.asarray(nib.as_closest_canonical(nib.load(root / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz")).dataobj)
    assert (got >= 1).sum() == (src > 0).sum() and (got == 3).sum() == (src == 4).sum()
    assert (got >= 2).sum() == np.isin(src, [1, 4]).sum()
    (task,) = _sql(out, "SELECT task FROM datasets WHERE dataset_id = 'brats-like'")[0]
    assert task == "segmentation-3d"


def test_overlap_is_found_and_pretraining_can_drop_it(prefect_server, tmp_path):
    from mrifoundry.flows.downstream import ingest_downstream_flow
    from mrifoundry.flows.ingest import ingest
    from mrifoundry.flows.pretrain import pretrain
    out = tmp_path / "out"
    bids = make_bids(tmp_path / "ds", broken=False)
    ingest(bids=str(bids), dataset="ds", out=str(out), body_part="brain")
    # a downstream task whose one case is sub-02's T1 (same voxels, other file): a leak in waiting
    task = tmp_path / "task"
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    src = nib.load(bids / "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii")
    nib.save(src, task / "imagesTr" / "case1.nii.gz")
    nib.save(nib.Nifti1Image((np.asarray(src.dataobj) > 0).astype(np.uint8), src.affine),
             task / "labelsTr" / "case1.nii.gz")
    ingest_downstream_flow(root=str(task), dataset_id="leaky", out=str(out), voxel_size_mm=None,
                           split=(1.0, 0.0, 0.0), folds=None)
    from mrifoundry.tasks.ingest.labelled3d.overlap import overlap
    query = ("SELECT r.series_id, r.exam_id, r.nifti_file FROM series r WHERE r.status = 'ok' "
             "AND r.sequence_type IN ('T1', 'T2', 'BOLD')")
    rep = overlap(out / "research", query, "leaky")
    sub02 = {r[0] for r in _sql(out, "SELECT r.series_id FROM series r JOIN exams e USING (exam_id) WHERE "
                                     "e.patient_id = (SELECT patient_id FROM exams e2 JOIN series r2 USING (exam_id) "
                                     "WHERE r2.series_id = ?) AND r.status = 'ok' AND r.sequence_type IN ('T1', 'T2')",
                                [rep["content"]["series_ids"][0]])}
    assert rep["content"]["n_series"] == 1 and rep["n_series_excluded"] == len(sub02) == 2   # its T1 and T2
    run = pretrain(out=str(out), query=query, recipe="brainsegfounder-tiny", run_name="no-leak",
                   overrides={"max_iterations": 1}, exclude_overlap=["leaky"])
    (n, stored) = _sql(out, "SELECT n_slices, query FROM models WHERE model_id = 'no-leak'")[0]
    assert run["iterations"] == 1 and n == 4 - 2 and "leaky" in stored   # sub-01's T1 and BOLD are left
