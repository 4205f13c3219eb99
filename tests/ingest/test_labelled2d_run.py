"""Labelled 2D datasets from the command: layouts, a label mapping (select, merge, rename), an
imported split, and the provenance in ``datasets``."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mrifoundry.catalog.views import connect
from mrifoundry.errors import UsageError
from mrifoundry.flows.cli import main
from mrifoundry.params import Labelled2dParams
from mrifoundry.tasks.ingest.labelled2d import load_labelled
from mrifoundry.tasks.ingest.labelled2d_run import run_ingest_labelled

PATIENTS = ("p1", "p2", "p3", "p4", "p5")


def _organs(rng, shape=(24, 24)) -> np.ndarray:
    """A mask with values 0..4 (four 'organs' as blocks, sizes drawn at random)."""
    m = np.zeros(shape, np.uint8)
    for v, (r, c) in zip((1, 2, 3, 4), ((2, 2), (2, 13), (13, 2), (13, 13))):
        h, w = rng.integers(3, 9, size=2)
        m[r:r + h, c:c + w] = v
    return m


@pytest.fixture(scope="module")
def mask_folder(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("maskfolder")
    (root / "images").mkdir()
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    masks = {}
    for p in PATIENTS:
        for k in range(2):
            name = f"{p}-s{k}.png"
            m = _organs(rng)
            masks[name] = m
            Image.fromarray((rng.random(m.shape) * 255).astype(np.uint8)).save(root / "images" / name)
            Image.fromarray(m).save(root / "masks" / name)
    Image.fromarray(np.zeros((24, 24), np.uint8)).save(root / "images" / "orphan-s0.png")   # no mask
    return root, masks


def _ds(out: Path, dataset_id: str) -> dict:
    con = connect(out / "research")
    try:
        cur = con.execute("SELECT * FROM datasets WHERE dataset_id = ?", [dataset_id])
        return dict(zip([d[0] for d in cur.description], cur.fetchone()))
    finally:
        con.close()


def test_mask_folder_select_and_rename(mask_folder, tmp_path):
    root, masks = mask_folder
    out = tmp_path / "out"
    res = run_ingest_labelled(Labelled2dParams(root=str(root), dataset_id="organs", out=str(out),
                                               labels={"liver": [1], "spleen": [3]}, patient_regex=r"^(p\d)-"))
    assert res["layout"] == "mask-folder" and res["n_slices"] == 10 and res["n_patients"] == 5
    assert [s["case"] for s in res["skipped"]] == ["orphan-s0.png"]
    rows = {Path(r["mask_path"]).name: r for r in load_labelled(out / "research", "organs")}
    assert {r["patient_id"] for r in rows.values()} == set(PATIENTS)
    by_source = {}
    for name, m in masks.items():
        want = np.where(m == 1, 1, np.where(m == 3, 2, 0)).astype(np.uint8)   # liver → 1, spleen → 2, rest → 0
        by_source[want.tobytes()] = want
    got = [np.asarray(Image.open(r["mask_file"])) for r in rows.values()]
    assert sorted(g.tobytes() for g in got) == sorted(by_source)       # every mask mapped exactly
    ds = _ds(out, "organs")
    assert json.loads(ds["label_names"]) == {"0": "background", "1": "liver", "2": "spleen"}
    assert json.loads(ds["label_mapping"])["lut"] == {"1": 1, "3": 2}
    assert ds["split_source"] == "seeded" and ds["split_seed"] == 0 and ds["source"] == "mask-folder"


def test_imported_split_file(mask_folder, tmp_path):
    root, _ = mask_folder
    out = tmp_path / "out"
    split = tmp_path / "split.csv"
    # MRI-CORE's patient rule joins the first two '-' fields: 'p1-s0.png' → 'p1s0', one patient per slice here
    split.write_text("case,split\np1s0,train\np1s1,train\np2s0,val\np3s0,test\np3s1,test\n")
    res = run_ingest_labelled(Labelled2dParams(root=str(root), dataset_id="organs", out=str(out),
                                               split_file=str(split)))
    got = {r["patient_id"]: r["split"] for r in load_labelled(out / "research", "organs")}
    assert got == {"p1s0": "train", "p1s1": "train", "p2s0": "val", "p3s0": "test", "p3s1": "test"}
    assert {s["case"] for s in res["skipped"]} >= {"p2s1", "p4s0", "p5s1"}   # not in the file
    assert not (out / "research" / "labelled" / "organs" / "images" / "p4s0_z0000.png").exists()
    ds = _ds(out, "organs")
    assert ds["split_source"] == f"split.csv sha256:{hashlib.sha256(split.read_bytes()).hexdigest()[:16]}"
    assert ds["split_seed"] is None and ds["label_mapping"] is None


def test_nnunet_folder_merge_and_splits_final(tmp_path):
    """imagesTr/labelsTr with dataset.json names; {1: 1, 2: 1} merges two labels; fold 1 of splits_final.json."""
    root = tmp_path / "Dataset001_Toy"
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1, "b": 2, "c": 3},
                                                   "channel_names": {"0": "MR"}, "file_ending": ".nii.gz"}))
    rng = np.random.default_rng(1)
    voxels = {}
    for case in ("toy_001", "toy_002", "toy_003", "toy_004"):
        lab = rng.integers(0, 4, size=(8, 8, 3)).astype(np.uint8)
        voxels[case] = lab
        nib.save(nib.Nifti1Image(rng.random((8, 8, 3)).astype(np.float32), np.eye(4)),
                 root / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(lab, np.eye(4)), root / "labelsTr" / f"{case}.nii.gz")
    folds = [{"train": ["toy_001", "toy_002"], "val": ["toy_003"]},
             {"train": ["toy_003", "toy_004"], "val": ["toy_001"]}]
    (tmp_path / "splits_final.json").write_text(json.dumps(folds))
    out = tmp_path / "out"
    res = run_ingest_labelled(Labelled2dParams(root=str(root), dataset_id="toy", out=str(out),
                                               labels={"1": 1, "2": 1}, split_file=str(tmp_path / "splits_final.json"),
                                               split_fold=1))
    assert res["layout"] == "nifti-pairs"
    rows = load_labelled(out / "research", "toy")
    assert {r["patient_id"]: r["split"] for r in rows} == {"toy_003": "train", "toy_004": "train", "toy_001": "val"}
    fg = sum(int((np.asarray(Image.open(r["mask_file"])) == 1).sum()) for r in rows)
    assert fg == sum(int(np.isin(voxels[c], (1, 2)).sum()) for c in ("toy_001", "toy_003", "toy_004"))
    assert json.loads(_ds(out, "toy")["label_names"]) == {"0": "background", "1": "a+b"}


def test_from_the_command(mask_folder, tmp_path, capsys):
    root, _ = mask_folder
    out = tmp_path / "out"
    rc = main(["ingest-labelled", str(root), "--dataset-id", "organs", "--out", str(out),
               "--labels", '{"liver": [1]}', "--split", "0.5,0.25,0.25"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert res["n_slices"] == 10 and json.loads(_ds(out, "organs")["label_names"])["1"] == "liver"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"train": ["p1s0"], "holdout": ["p2s0"]}))
    rc = main(["ingest-labelled", str(root), "--dataset-id", "organs2", "--out", str(out), "--split-file", str(bad)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "'holdout'" in err[0]


def test_unknown_layout_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match="not a labelled 2D dataset"):
        run_ingest_labelled(Labelled2dParams(root=str(tmp_path / "empty"), dataset_id="x", out=str(tmp_path / "o")))
