"""Labelled-dataset ingest: NIfTI pairs (MNI152 WM, phantom) and MRI-CORE PNG lists."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mrifoundry.catalog.schema import RESEARCH_TABLES
from mrifoundry.catalog.store import table_file, write_parquet_atomic
from mrifoundry.catalog.views import build_research_db
from mrifoundry.sample.labelled import make_mni_wm_dataset, make_phantom_dataset
from mrifoundry.tasks.ingest.labelled2d import assign_splits, ingest_nifti_pairs, load_labelled
from mrifoundry.tasks.ingest.labelled2d_png import ingest_png_list, mri_core_patient_id


@pytest.fixture(scope="module")
def mni_root(tmp_path_factory) -> Path:
    return make_mni_wm_dataset(tmp_path_factory.mktemp("mni"), n_cases=6, seed=0)


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory) -> Path:
    return make_phantom_dataset(tmp_path_factory.mktemp("phantom"), n_cases=4, seed=0)


def _fresh_research(path: Path) -> Path:
    """A research root with no curated data: empty curated tables (the views read every table file)."""
    path.mkdir(parents=True)
    for t in RESEARCH_TABLES:
        write_parquet_atomic(t.schema.empty_table(), table_file(path, t))
    build_research_db(path)
    return path


@pytest.fixture
def research(tmp_path) -> Path:
    return _fresh_research(tmp_path / "research")


@pytest.fixture(scope="module")
def mni_ingested(tmp_path_factory, mni_root) -> tuple[Path, dict]:
    research = _fresh_research(tmp_path_factory.mktemp("r") / "research")
    return research, ingest_nifti_pairs(research, mni_root, "mniwm", source="mni152-wm")


def _png(path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L"
        return np.asarray(im)


def _ras(path: Path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(path)).dataobj)


def test_counts_match_slices_on_disk(mni_ingested, mni_root):
    research, summary = mni_ingested
    depth = sum(nib.load(p).shape[2] for p in (mni_root / "labelsTr").glob("*.nii.gz"))
    rows = load_labelled(research, "mniwm")
    out = research / "labelled" / "mniwm"
    assert summary["n_slices"] == len(rows) == depth
    assert len(list((out / "images").glob("*.png"))) == len(list((out / "masks").glob("*.png"))) == depth
    assert summary["skipped"] == [] and summary["n_patients"] == 6
    assert not list((research / "labelled").glob(".*")), "temp folders left behind"
    con = duckdb.connect(str(research / "catalog" / "catalog.duckdb"), read_only=True)
    ds = con.execute("SELECT source, n_patients, n_slices, label_names FROM datasets").fetchall()
    con.close()
    assert ds == [("mni152-wm", 6, depth, json.dumps({"0": "background", "1": "white_matter"}))]
    r = rows[0]
    assert Path(r["image_file"]).is_file() and r["image_file"] == str(research.resolve() / r["image_path"])
    assert _png(r["mask_file"]).shape == (r["height"], r["width"])
    assert (r["spacing_x"], r["spacing_y"], r["slice_thickness"]) == (2.0, 2.0, 2.0)


def test_split_is_patient_level_and_reproducible(mni_ingested, mni_root, tmp_path):
    research, summary = mni_ingested
    rows = load_labelled(research, "mniwm")
    by_patient = {}
    for r in rows:
        by_patient.setdefault(r["patient_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    assert summary["patients_per_split"] == {"train": 4, "val": 1, "test": 1}
    val = load_labelled(research, "mniwm", split="val")
    assert val and {r["split"] for r in val} == {"val"}
    again = _fresh_research(tmp_path / "again")
    ingest_nifti_pairs(again, mni_root, "mniwm")
    assert {r["slice_id"]: r["split"] for r in load_labelled(again, "mniwm")} == \
        {r["slice_id"]: r["split"] for r in rows}
    ids = [f"p{i}" for i in range(40)]
    assert assign_splits(ids, seed=1) == assign_splits(list(reversed(ids)), seed=1) != assign_splits(ids, seed=2)


def test_masks_and_images_equal_the_volume_slices(mni_ingested, mni_root):
    research, _ = mni_ingested
    for r in load_labelled(research, "mniwm"):
        label = _ras(mni_root / "labelsTr" / f"{r['patient_id']}.nii.gz")
        # the documented display: columns = R axis (left→right), rows = A axis (anterior on top)
        expected = np.rot90(label[:, :, r["slice_index"]])
        mask = _png(r["mask_file"])
        assert mask.dtype == np.uint8 and np.array_equal(mask, expected), r["slice_id"]
        assert r["foreground_fraction"] == pytest.approx((expected > 0).mean())
        assert r["has_foreground"] == bool(expected.any())
    r = load_labelled(research, "mniwm")[7]
    img = np.rot90(_ras(mni_root / "imagesTr" / f"{r['patient_id']}_0000.nii.gz")[:, :, r["slice_index"]])
    scaled = (img - img.min()) / (img.max() - img.min()) * 255
    assert np.abs(_png(r["image_file"]).astype(float) - scaled).max() <= 0.5 + 1e-6


def test_phantom_reoriented_and_keep_empty(research, phantom_root):
    s = ingest_nifti_pairs(research, phantom_root, "phantom", axis=2, keep_empty=False)
    assert s["label_names"] == {"0": "background", "1": "body", "2": "lesion"}
    rows = load_labelled(research, "phantom")
    assert rows and all(r["has_foreground"] for r in rows)
    for r in rows:
        # odd phantom cases are stored LAS: comparing after as_closest_canonical checks the flip
        expected = np.rot90(_ras(phantom_root / "labelsTr" / f"{r['patient_id']}.nii.gz")[:, :, r["slice_index"]])
        assert np.array_equal(_png(r["mask_file"]), expected)
    zooms = nib.load(phantom_root / "labelsTr" / "phantom_000.nii.gz").header.get_zooms()
    r0 = next(r for r in rows if r["patient_id"] == "phantom_000")
    assert (r0["spacing_x"], r0["spacing_y"], r0["slice_thickness"]) == pytest.approx(zooms)


def test_mismatched_case_is_skipped_with_reason(research, phantom_root, tmp_path):
    root = tmp_path / "bad"
    shutil.copytree(phantom_root, root)
    lab = nib.load(root / "labelsTr" / "phantom_001.nii.gz")
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj)[:, :-3], lab.affine), root / "labelsTr" / "phantom_001.nii.gz")
    lab = nib.load(root / "labelsTr" / "phantom_002.nii.gz")
    shifted = lab.affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj), shifted), root / "labelsTr" / "phantom_002.nii.gz")
    s = ingest_nifti_pairs(research, root, "bad")
    reasons = {x["case"]: x["reason"] for x in s["skipped"]}
    assert set(reasons) == {"phantom_001", "phantom_002"}
    assert "phantom_001" in reasons["phantom_001"] and "shape" in reasons["phantom_001"]
    assert "affine" in reasons["phantom_002"]
    assert {r["patient_id"] for r in load_labelled(research, "bad")} == {"phantom_000", "phantom_003"}


def test_reingest_replaces_rows(research, phantom_root):
    ingest_nifti_pairs(research, phantom_root, "other")
    first = ingest_nifti_pairs(research, phantom_root, "phantom", keep_empty=True)
    second = ingest_nifti_pairs(research, phantom_root, "phantom", keep_empty=False, seed=3)
    assert second["n_slices"] < first["n_slices"]
    con = duckdb.connect(str(research / "catalog" / "catalog.duckdb"), read_only=True)
    per_ds = dict(con.execute("SELECT dataset_id, COUNT(*) FROM labelled_slices GROUP BY 1").fetchall())
    dups = con.execute("SELECT COUNT(*) FROM (SELECT dataset_id, slice_id FROM labelled_slices "
                       "GROUP BY ALL HAVING COUNT(*) > 1)").fetchone()[0]
    ds = con.execute("SELECT dataset_id, n_slices, split_seed FROM datasets ORDER BY 1").fetchall()
    con.close()
    assert per_ds == {"other": first["n_slices"], "phantom": second["n_slices"]} and dups == 0
    assert ds == [("other", first["n_slices"], 0), ("phantom", second["n_slices"], 3)]
    assert len(list((research / "labelled" / "phantom" / "masks").glob("*.png"))) == second["n_slices"]


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def test_png_list_with_mri_core_patient_rule(research, tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for pat in ("knee-017", "knee-018", "knee-019", "hip-002", "hip-003"):
        for z in range(3):
            name = f"{pat}-s{z:02d}.png"
            mask = np.zeros((32, 40), np.uint8)
            mask[8:16, 10:20] = 255 if z else 0  # 0/255 masks are stored as 0/1
            _write_png(tmp_path / "img" / name, rng.integers(10, 200, (32, 40)).astype(np.uint8))
            _write_png(tmp_path / "mask" / name, mask)
            lines.append(f"img/{name},mask/{name}" if z % 2 else f"img/{name} mask/{name}")
    _write_png(tmp_path / "img" / "hip-004-s00.png", np.zeros((32, 40), np.uint8))
    _write_png(tmp_path / "mask" / "hip-004-s00.png", np.zeros((30, 40), np.uint8))
    lines.append("img/hip-004-s00.png,mask/hip-004-s00.png")
    (tmp_path / "train.txt").write_text("\n".join(lines) + "\n")

    assert mri_core_patient_id("knee-017-s02.png") == "knee017"
    s = ingest_png_list(research, tmp_path / "train.txt", "pnglist", split=(0.6, 0.2, 0.2), seed=0)
    assert [x["case"] for x in s["skipped"]] == ["hip-004-s00.png"] and "shape" in s["skipped"][0]["reason"]
    rows = load_labelled(research, "pnglist")
    assert len(rows) == 15 and s["n_patients"] == 5
    assert {r["patient_id"] for r in rows} == {"knee017", "knee018", "knee019", "hip002", "hip003"}
    assert all(len({r["split"] for r in rows if r["patient_id"] == p}) == 1 for p in {r["patient_id"] for r in rows})
    r = next(r for r in rows if r["slice_id"] == "knee017_z0001")
    assert set(np.unique(_png(r["mask_file"]))) == {0, 1} and r["spacing_x"] is None
    assert r["foreground_fraction"] == pytest.approx(80 / (32 * 40))
    src = np.asarray(Image.open(tmp_path / "img" / "knee-017-s01.png")).astype(float)
    expected = np.rint((src - src.min()) / (src.max() - src.min()) * 255)
    assert np.array_equal(_png(r["image_file"]), expected)

    s = ingest_png_list(research, tmp_path / "train.txt", "pnglist", patient_regex=r"^([a-z]+)-")
    assert s["n_patients"] == 2 and {r["patient_id"] for r in load_labelled(research, "pnglist")} == {"knee", "hip"}


def test_unknown_dataset_and_bad_arguments(research, phantom_root):
    with pytest.raises(KeyError):
        load_labelled(research, "nope")
    with pytest.raises(ValueError):
        ingest_nifti_pairs(research, phantom_root, "../escape")
    with pytest.raises(ValueError):
        ingest_nifti_pairs(research, phantom_root, "x", split=(0.5, 0.2, 0.2))
    with pytest.raises(FileNotFoundError):
        ingest_nifti_pairs(research, research, "x")
