"""The 3D half end to end under a real Prefect server: a BIDS collection pretrains BrainSegFounder
(tiny), which is fine-tuned with MONAI's SwinUNETR decoder on an ingested BraTS-style task
(per-label DSC/NSD in the catalog); a classification CSV goes through k-fold classify-3d."""
from __future__ import annotations

import csv
import json

import pytest

from mrifoundry.catalog.views import connect
from mrifoundry.sample.bids_corpus import make_bids
from mrifoundry.sample.brats_like import make_brats_like_dataset

pytestmark = [pytest.mark.prefect_server]
REGIONS = {"whole_tumor": [1, 2, 4], "tumor_core": [1, 4], "enhancing": [4]}


def _sql(out, q, params=()):
    con = connect(out / "research")
    try:
        return con.execute(q, list(params)).fetchall()
    finally:
        con.close()


@pytest.fixture(scope="module")
def out(prefect_server, tmp_path_factory):
    from mrifoundry.flows.downstream import ingest_downstream_flow
    from mrifoundry.flows.ingest import ingest
    from mrifoundry.flows.pretrain import pretrain
    tmp = tmp_path_factory.mktemp("ft")
    out = tmp / "out"
    ingest(bids=str(make_bids(tmp / "ds", broken=False)), dataset="ds", out=str(out), body_part="brain")
    pretrain(out=str(out), recipe="brainsegfounder-tiny", run_name="bsf-bids", overrides={"max_iterations": 2},
             query="SELECT r.series_id, r.exam_id, r.nifti_file FROM series r JOIN exams e USING (exam_id) "
                   "WHERE e.dataset = 'ds' AND r.status = 'ok'")
    brats = make_brats_like_dataset(tmp / "brats", n_cases=3, seed=0)
    ingest_downstream_flow(root=str(brats), dataset_id="brats-like", out=str(out), voxel_size_mm=None,
                           labels=REGIONS, split=(0.34, 0.33, 0.33), folds=3)
    # sequence classification: every channel of every case is one image, its channel the class
    with open(tmp / "modality.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "label", "patient"])
        for case in sorted(p.name for p in brats.iterdir()):
            for ch in ("t1", "t2"):
                w.writerow([f"brats/{case}/{case}_{ch}.nii.gz", ch, case])
    ingest_downstream_flow(root=str(tmp / "modality.csv"), dataset_id="modality", out=str(out), layout="csv",
                           voxel_size_mm=None, folds=3)
    return out


def test_swinunetr_fine_tune_of_a_pretrain_run_reports_dsc_per_label(out):
    from mrifoundry.flows.finetune import finetune_3d
    res = finetune_3d(dataset_id="brats-like", out=str(out), pretrained="bsf-bids", decoder="swinunetr",
                      preset="tiny", roi=64, iterations=3, eval_id="ft-bsf")
    rows = dict(_sql(out, "SELECT metric, value FROM evaluations WHERE eval_id = 'ft-bsf'"))
    for v in (1, 2, 3):   # whole tumour, tumour core, enhancing
        assert 0.0 <= rows[f"dice_{v}"] <= 1.0 and 0.0 <= rows[f"nsd_{v}"] <= 1.0
    assert rows["dice_mean"] == pytest.approx(sum(rows[f"dice_{v}"] for v in (1, 2, 3)) / 3, abs=1e-6)
    (model, kind, n, details) = _sql(out, "SELECT model, kind, n, details FROM evaluations WHERE eval_id = 'ft-bsf' "
                                          "AND metric = 'dice_mean'")[0]
    assert (model, kind, n) == ("bsf-bids", "finetune-3d", 1)   # one test patient
    assert json.loads(details)["config"]["regions"] is True   # BraTS regions scored as label ≥ v
    assert _sql(out, "SELECT nested_regions FROM datasets WHERE dataset_id = 'brats-like'") == [(True,)]
    assert res["overlay_png"] and _sql(out, "SELECT count(*) FROM evaluations WHERE eval_id = 'ft-bsf' "
                                            "AND picture_path IS NOT NULL")[0][0] > 0


def test_classify_3d_runs_k_fold_and_records_auroc(out):
    from mrifoundry.flows.finetune import classify_3d
    res = classify_3d(dataset_id="modality", out=str(out), model="brainsegfounder", arch="swin_tiny", mode="linear",
                      preset="tiny", iterations=30, eval_id="cls-modality")
    rows = {m: (v, s, n) for m, v, s, n in _sql(out, "SELECT metric, value, std, n FROM evaluations "
                                                    "WHERE eval_id = 'cls-modality'")}
    assert {"auroc", "accuracy", "balanced_accuracy"} <= set(rows)
    assert 0.0 <= rows["auroc"][0] <= 1.0 and rows["auroc"][2] == 6   # six images over the three folds
    assert res["roc_png"]
