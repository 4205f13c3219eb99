"""nnU-Net v2 on the few-shot split: one tiny repeat (32 px slices, 1 epoch of 2 iterations, CPU,
augmentation in-process) through nnU-Net's own planning, preprocessing, training and prediction;
the exported split is pick_fewshot's, and the stored DSC is recomputed here from the saved
predictions with NumPy against the catalog's masks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mrifoundry.params import NnunetParams

pytestmark = pytest.mark.slow
SIZE = 32


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from mrifoundry.sample.labelled import make_mni_wm_dataset
    from mrifoundry.tasks.evaluation.nnunet_baseline import run_nnunet
    from mrifoundry.tasks.ingest.labelled2d import ingest_nifti_pairs
    base = tmp_path_factory.mktemp("nnunet")
    research = base / "out" / "research"
    research.mkdir(parents=True)
    ingest_nifti_pairs(research, make_mni_wm_dataset(base / "src", n_cases=4, seed=0), "wm",
                       split=(0.5, 0.25, 0.25), seed=0)
    params = NnunetParams(dataset_id="wm", out=str(base / "out"), k_patients=2, n_val_patients=1, repeats=1,
                          seed=3, image_size=SIZE, epochs=1, iterations_per_epoch=2, val_iterations_per_epoch=1,
                          workers=0, device="cpu")
    lines: list[str] = []
    res = run_nnunet(params, progress=lines.append)
    return research, params, res, lines


def _masks(rows) -> np.ndarray:
    return np.stack([np.asarray(Image.open(r["mask_file"]).convert("L").resize((SIZE, SIZE), Image.NEAREST)) > 0
                     for r in rows])


def test_export_is_pick_fewshots_split(run):
    from mrifoundry.tasks.evaluation.fewshot import pick_fewshot
    from mrifoundry.tasks.ingest.labelled2d import load_labelled
    research, params, res, _ = run
    split = pick_fewshot(load_labelled(research, "wm"), 2, 1, params.seed)   # repeat 0: seed + 0
    root = Path(res["eval_dir"]) / "nnunet"
    man = json.loads((root / "manifest.json").read_text())
    rep = man["repeats"][0]
    assert [c["slice_id"] for c in rep["train"]] == [r["slice_id"] for r in split["train"]]
    assert [c["slice_id"] for c in rep["val"]] == [r["slice_id"] for r in split["val"]]
    assert [c["slice_id"] for c in man["test"]] == [r["slice_id"] for r in split["test_all"]]
    raw = root / "raw" / rep["dataset"]
    cases = sorted(p.name[:-len("_0000.png")] for p in (raw / "imagesTr").glob("*_0000.png"))
    assert cases == sorted(c["case"] for c in rep["train"] + rep["val"])
    lab = np.asarray(Image.open(raw / "labelsTr" / f"{rep['train'][0]['case']}.png"))
    assert lab.shape == (SIZE, SIZE) and set(np.unique(lab)) == {0, 1}
    folds = json.loads((root / "preprocessed" / rep["dataset"] / "splits_final.json").read_text())
    assert folds == [{"train": [c["case"] for c in rep["train"]], "val": [c["case"] for c in rep["val"]]}]
    assert (root / "results" / rep["dataset"] / "nnUNetTrainer__nnUNetPlans__2d" / "fold_0"
            / "checkpoint_final.pth").is_file()


def test_stored_dsc_equals_numpy_recomputation(run):
    from mrifoundry.catalog.views import connect
    from mrifoundry.tasks.ingest.labelled2d import load_labelled
    research, params, res, _ = run
    root = Path(res["eval_dir"]) / "nnunet"
    man = json.loads((root / "manifest.json").read_text())
    by_id = {r["slice_id"]: r for r in load_labelled(research, "wm", "test")}
    rows = [by_id[c["slice_id"]] for c in man["test"]]
    pred = np.stack([np.asarray(Image.open(root / "predictions" / "r0" / f"{c['case']}.png")) > 0 for c in man["test"]])
    target = _masks(rows)
    fg = target.reshape(len(target), -1).any(1)
    inter, total = (pred & target).sum((1, 2)), pred.sum((1, 2)) + target.sum((1, 2))
    per_slice = np.where(total == 0, 1.0, 2 * inter / np.maximum(total, 1))
    pids = np.array([str(r["patient_id"]) for r in rows])
    dsc3 = np.mean([2 * (pred[fg & (pids == p)] & target[fg & (pids == p)]).sum()
                    / (pred[fg & (pids == p)].sum() + target[fg & (pids == p)].sum()) for p in np.unique(pids[fg])])
    con = connect(research)
    try:
        stored = dict(con.execute("SELECT metric, value FROM evaluations WHERE eval_id = ? AND model = 'nnunet-v2' "
                                  "AND kind = 'few-shot' AND n = 1", [res["eval_id"]]).fetchall())
    finally:
        con.close()
    assert set(stored) == {"test_dsc_2d", "test_dsc_3d", "test_nsd_3d", "test_all_dsc_2d", "test_all_dsc_3d",
                           "test_all_nsd_3d"}
    assert stored["test_all_dsc_2d"] == pytest.approx(per_slice.mean(), abs=1e-6)
    assert stored["test_dsc_2d"] == pytest.approx(per_slice[fg].mean(), abs=1e-6)
    assert stored["test_dsc_3d"] == pytest.approx(dsc3, abs=1e-6)
    assert pred.any() and 0.0 < stored["test_dsc_3d"] <= 1.0


def test_quiet_progress_and_log(run):
    _, _, res, lines = run
    assert lines and all(line.startswith("nnU-Net") for line in lines)
    assert any("epoch 0" in line for line in lines) and any("predicted" in line for line in lines)
    log = Path(res["log"]).read_text()
    assert "verify_dataset_integrity" in log and "Epoch 0" in log
    assert len(lines) < 12
