"""3D downstream ingest: MSD 4D / nnU-Net channel files / BraTS folders, per-case skip reasons,
label mapping, patient-level split and folds, re-ingest, the catalog views."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import nibabel as nib
import numpy as np
import pytest

from mrifoundry.catalog.store import catalog_dir
from mrifoundry.digest import voxel_sha256
from mrifoundry.ids import subject_key
from mrifoundry.settings import load_salt
from mrifoundry.tasks.ingest.labelled3d import ingest_downstream, load_labelled_volumes

SALT = "test-salt"
SHAPE = (12, 10, 8)
#: LAS, 2 mm: the ingest must flip x to reach RAS
LAS = np.array([[-2.0, 0, 0, 30.0], [0, 2.0, 0, -10.0], [0, 0, 2.0, 5.0], [0, 0, 0, 1]])


def volume(seed: int, channels: int | None = None, shape=SHAPE) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 500, shape + ((channels,) if channels else ())).astype(np.int16)


def labels(values=(1, 2, 4), shape=SHAPE) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[2:8, 2:8, 1:7] = values[0]  # nested blobs, BraTS-like: 4 inside 1 inside 2
    lab[1:9, 1:9, 1:7][lab[1:9, 1:9, 1:7] == 0] = values[1]
    lab[4:6, 4:6, 3:5] = values[2]
    return lab


def save(arr: np.ndarray, path: Path, affine=LAS, dtype=None) -> Path:
    img = nib.Nifti1Image(arr if dtype is None else arr.astype(dtype), affine)
    img.header["descrip"] = b"PATIENT NAME in the source header"
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"source extension"))
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def ras(path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(path)).dataobj)


@pytest.fixture(scope="module")
def msd_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("msd")
    for i in range(6):
        save(volume(i, 2), root / "imagesTr" / f"c{i}.nii.gz")
        save(labels(), root / "labelsTr" / f"c{i}.nii.gz")
    bad = {"nan": (volume(9, 2).astype(np.float32), labels()), "mism": (volume(9, 2), labels(shape=(12, 10, 7))),
           "frac": (volume(9, 2), labels().astype(np.float32) * 0.5), "flat": (volume(9, shape=(12, 10)), None),
           "zch": (volume(9, 3), labels())}
    bad["nan"][0][0, 0, 0, 1] = np.nan
    for case, (img, lab) in bad.items():
        save(img, root / "imagesTr" / f"{case}.nii.gz")
        if lab is not None:
            save(lab, root / "labelsTr" / f"{case}.nii.gz")
    save(volume(9, 2), root / "imagesTr" / "aff.nii.gz")
    shifted = LAS.copy()
    shifted[2, 3] += 4.0  # same shape, label moved 4 mm: another grid
    save(labels(), root / "labelsTr" / "aff.nii.gz", affine=shifted)
    save(labels(), root / "labelsTr" / "flat.nii.gz")
    (root / "imagesTr" / "corrupt.nii.gz").write_bytes(b"not a nifti at all")
    save(labels(), root / "labelsTr" / "corrupt.nii.gz")
    save(volume(9, 2), root / "imagesTr" / "orphan.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"modality": {"0": "FLAIR", "1": "T1w"},
                                                   "labels": {"0": "background", "1": "core", "2": "edema",
                                                              "4": "enhancing"}}))
    return root


@pytest.fixture(scope="module")
def msd(tmp_path_factory, msd_root):
    research = tmp_path_factory.mktemp("out") / "research"
    res = ingest_downstream(research, msd_root, "msd4d", labels={1: 1, 2: 1, 4: 2}, salt=SALT, folds=3, seed=3)
    return research, res


def test_msd_bad_cases_are_skipped_with_their_reason(msd):
    _, res = msd
    reasons = {s["case"]: s["reason"] for s in res["skipped"]}
    expected = {"nan": "NaN", "mism": "label is not on the image's grid (shape (12, 10, 7) != (12, 10, 8))",
                "aff": "label is not on the image's grid (affines differ by up to 4", "frac": "not integers",
                "flat": "expected a 3D image", "corrupt": "cannot read", "orphan": "without a label",
                "zch": "3 channels, the dataset has 2"}
    assert set(reasons) == set(expected)
    for case, text in expected.items():
        assert text in reasons[case], (case, reasons[case])
    assert res["n_volumes"] == 6 and res["n_channels"] == 2 and res["channels"] == ["FLAIR", "T1w"]
    assert res["label_names"] == {"0": "background", "1": "core+edema", "2": "enhancing"}


def test_msd_rows_files_and_geometry(msd, msd_root):
    research, _ = msd
    rows = load_labelled_volumes(research, "msd4d")
    assert [r["case_id"] for r in rows] == [f"c{i}" for i in range(6)]
    r = rows[0]
    img, lab = nib.load(r["image_file"]), nib.load(r["label_file"])
    # 2 mm → 1 mm: 12 centres 2 mm apart span 22 mm → 23 voxels
    assert img.shape == (23, 19, 15, 2) and lab.shape == (23, 19, 15) and r["shape"] == "23x19x15"
    assert r["zooms"] == "1x1x1" and np.allclose(img.affine, lab.affine)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S") and img.get_data_dtype() == np.int16
    assert lab.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(lab.dataobj))) == {0, 1, 2}
    assert r["label_values"] == "[0, 1, 2]" and r["n_channels"] == 2 and r["source_format"] == "nifti"
    assert img.header["descrip"].tobytes().rstrip(b"\0") == b"mrifoundry downstream"
    assert len(img.header.extensions) == 0 and len(lab.header.extensions) == 0
    # world positions kept: the source's first RAS voxel centre is the output's first voxel
    src = nib.as_closest_canonical(nib.load(msd_root / "imagesTr" / "c0.nii.gz"))
    assert np.allclose(img.affine[:3, 3], src.affine[:3, 3])
    # grid-point voxels (even indices) are the source values exactly (linear interpolation at nodes)
    assert np.array_equal(np.asarray(img.dataobj)[::2, ::2, ::2], np.asarray(src.dataobj))
    # digests: each source channel, as its own 3D file would give
    for c in range(2):
        alone = save(np.asarray(nib.load(msd_root / "imagesTr" / "c0.nii.gz").dataobj)[..., c],
                     msd_root.parent / f"alone{c}.nii")
        assert r["content_sha256"][c] == voxel_sha256(nib.load(alone))
    assert r["subject_key"] == subject_key("c0", SALT)


def test_msd_native_grid_label_values_after_mapping(tmp_path, msd_root):
    res = ingest_downstream(tmp_path / "research", msd_root, "native", layout="msd", voxel_size_mm=None, salt=SALT,
                            labels={"whole": [1, 2, 4], "core": [1, 4], "enh": [4]})
    row = load_labelled_volumes(tmp_path / "research", "native")[0]
    src_lab = ras(msd_root / "labelsTr" / "c0.nii.gz")
    expected = np.select([src_lab == 4, np.isin(src_lab, [1, 4]), src_lab == 2], [3, 2, 1], 0)
    assert np.array_equal(ras(row["label_file"]), expected)
    assert np.array_equal(ras(row["image_file"]), ras(msd_root / "imagesTr" / "c0.nii.gz"))
    assert row["shape"] == "12x10x8" and row["zooms"] == "2x2x2"
    assert res["label_names"] == {"0": "background", "1": "whole", "2": "core", "3": "enh"}


def test_splits_and_folds_are_per_patient_and_seeded(msd, msd_root, tmp_path):
    research, res = msd
    rows = load_labelled_volumes(research, "msd4d")
    assert res["patients_per_split"] == {"train": 4, "val": 1, "test": 1}
    assert sorted(res["patients_per_fold"].values()) == [2, 2, 2]
    assert sorted(r["fold"] for r in rows) == [0, 0, 1, 1, 2, 2]
    again = ingest_downstream(tmp_path / "research", msd_root, "msd4d", labels={1: 1, 2: 1, 4: 2}, salt=SALT,
                              folds=3, seed=3, voxel_size_mm=None)
    rows2 = load_labelled_volumes(tmp_path / "research", "msd4d")
    assert [(r["split"], r["fold"]) for r in rows] == [(r["split"], r["fold"]) for r in rows2]
    assert again["patients_per_split"] == res["patients_per_split"]
    assert len(load_labelled_volumes(research, "msd4d", split="test")) == 1


def test_reingest_replaces_rows_and_files_and_views_answer_sql(tmp_path, msd_root):
    research = tmp_path / "out" / "research"
    root = tmp_path / "copy"
    shutil.copytree(msd_root, root)
    ingest_downstream(research, root, "a", salt=SALT, voxel_size_mm=None)
    ingest_downstream(research, root, "b", salt=SALT, voxel_size_mm=None)
    for c in ("c4", "c5"):
        (root / "labelsTr" / f"{c}.nii.gz").unlink()
    res = ingest_downstream(research, root, "a", salt=SALT, voxel_size_mm=None, folds=None)
    assert res["n_volumes"] == 4 and {"c4", "c5"} <= {s["case"] for s in res["skipped"]}
    con = duckdb.connect(str(catalog_dir(research) / "catalog.duckdb"), read_only=True)
    try:
        got = con.execute("SELECT v.dataset_id, count(*), max(d.n_volumes), count(v.fold), bool_and(d.task = "
                          "'segmentation-3d') FROM labelled_volumes v JOIN datasets d USING (dataset_id) "
                          "GROUP BY 1 ORDER BY 1").fetchall()
        files = [r[0] for r in con.execute("SELECT image_file FROM labelled_volumes WHERE dataset_id = 'a'").fetchall()]
        chans = con.execute("SELECT channels FROM datasets WHERE dataset_id = 'a'").fetchone()[0]
    finally:
        con.close()
    assert got == [("a", 4, 4, 0, True), ("b", 6, 6, 6, True)]
    assert all(Path(f).exists() for f in files) and json.loads(chans) == ["FLAIR", "T1w"]
    images = research / "labelled" / "a" / "volumes" / "images"
    assert sorted(p.name for p in images.iterdir()) == [f"c{i}.nii.gz" for i in range(4)]
    assert not list((research / "labelled").glob(".a.tmp*"))


def test_nnunet_channel_files_and_default_salt(tmp_path):
    root = tmp_path / "nnunet"
    for i in range(3):
        for c in range(2):
            save(volume(10 * i + c), root / "imagesTr" / f"p{i}_{c:04d}.nii.gz")
        save(labels((1, 1, 2)), root / "labelsTr" / f"p{i}.nii.gz")
    save(volume(5), root / "imagesTr" / "grid_0000.nii.gz")
    save(volume(6, shape=(12, 10, 9)), root / "imagesTr" / "grid_0001.nii.gz")
    save(labels(), root / "labelsTr" / "grid.nii.gz")
    save(volume(7), root / "imagesTr" / "gap_0000.nii.gz")
    save(volume(8), root / "imagesTr" / "gap_0002.nii.gz")
    save(labels(), root / "labelsTr" / "gap.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2", "1": "ADC"},
                                                   "labels": {"background": 0, "zone": 1, "lesion": 2}}))
    research = tmp_path / "out" / "research"
    res = ingest_downstream(research, root, "nn", voxel_size_mm=None)
    reasons = {s["case"]: s["reason"] for s in res["skipped"]}
    assert "channel 1 is not on channel 0's grid (shape" in reasons["grid"] and "_0000.._0001" in reasons["gap"]
    assert res["channels"] == ["T2", "ADC"] and res["label_names"] == {"0": "background", "1": "zone", "2": "lesion"}
    rows = load_labelled_volumes(research, "nn")
    img = ras(rows[0]["image_file"])
    assert img.shape == (12, 10, 8, 2)
    assert np.array_equal(img[..., 1], ras(root / "imagesTr" / "p0_0001.nii.gz"))
    salt = load_salt(tmp_path / "out")  # OUT/restricted/salt, made by the ingest
    assert rows[0]["subject_key"] == subject_key("p0", salt)


def _brats_case(root: Path, case: str, names: tuple[str, ...], sep: str, seed: int, skip: str | None = None):
    for n in names:
        if n != skip:
            save(volume(seed + len(n)), root / case / f"{case}{sep}{n}.nii.gz")


def test_brats_2021_and_2023_folders(tmp_path):
    old, new = tmp_path / "b21", tmp_path / "b23"
    for i in range(3):
        _brats_case(old, f"BraTS2021_{i:05d}", ("t1", "t1ce", "t2", "flair", "seg"), "_", i)
        save(labels(), old / f"BraTS2021_{i:05d}" / f"BraTS2021_{i:05d}_seg.nii.gz")
    _brats_case(old, "BraTS2021_nofl", ("t1", "t1ce", "t2", "flair"), "_", 0, skip="flair")
    _brats_case(old, "BraTS2021_noseg", ("t1", "t1ce", "t2", "flair"), "_", 0)
    for case in ("BraTS-GLI-00001-000", "BraTS-GLI-00001-001", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"):
        _brats_case(new, case, ("t1n", "t1c", "t2w", "t2f"), "-", 1)
        save(labels((1, 2, 3)), new / case / f"{case}-seg.nii.gz")
    r21 = ingest_downstream(tmp_path / "research", old, "brats21", salt=SALT, voxel_size_mm=None,
                            labels={"whole_tumor": [1, 2, 4], "tumor_core": [1, 4], "enhancing": [4]})
    assert r21["layout"] == "brats" and r21["channels"] == ["t1", "t1ce", "t2", "flair"]
    assert {s["case"] for s in r21["skipped"]} == {"BraTS2021_nofl", "BraTS2021_noseg"}
    row = load_labelled_volumes(tmp_path / "research", "brats21")[0]
    src = ras(old / "BraTS2021_00000" / "BraTS2021_00000_seg.nii.gz")
    out = ras(row["label_file"])
    for value, region in ((1, [1, 2, 4]), (2, [1, 4]), (3, [4])):
        assert np.array_equal(out >= value, np.isin(src, region))
    flair = ras(old / "BraTS2021_00000" / "BraTS2021_00000_flair.nii.gz")
    assert np.array_equal(ras(row["image_file"])[..., 3], flair)  # channel order t1, t1ce, t2, flair
    r23 = ingest_downstream(tmp_path / "research", new, "brats23", salt=SALT, voxel_size_mm=None,
                            split=(0.34, 0.33, 0.33))
    assert r23["channels"] == ["t1n", "t1c", "t2w", "t2f"] and r23["n_patients"] == 3 and r23["n_volumes"] == 4
    assert r23["label_names"] == {"0": "background", "1": "necrotic_core", "2": "edema", "3": "enhancing"}
    rows = {r["case_id"]: r for r in load_labelled_volumes(tmp_path / "research", "brats23")}
    a, b = rows["BraTS-GLI-00001-000"], rows["BraTS-GLI-00001-001"]
    assert a["patient_id"] == b["patient_id"] == "BraTS-GLI-00001"
    assert (a["split"], a["fold"], a["subject_key"]) == (b["split"], b["fold"], b["subject_key"])


def test_nothing_to_ingest_and_bad_arguments(tmp_path, msd_root):
    root = tmp_path / "empty"
    save(volume(1), root / "imagesTr" / "x.nii.gz", dtype=np.float32)
    (root / "labelsTr").mkdir()
    with pytest.raises(ValueError, match="nothing to ingest.*without a label"):
        ingest_downstream(tmp_path / "r", root, "e", salt=SALT)
    for kw, match in (({"layout": "zip"}, "layout"), ({"folds": 1}, "folds"), ({"voxel_size_mm": 0}, "voxel_size"),
                      ({"split": (0.5, 0.5, 0.5)}, "split")):
        with pytest.raises(ValueError, match=match):
            ingest_downstream(tmp_path / "r", msd_root, "e", salt=SALT, **kw)
    with pytest.raises(ValueError, match="dataset_id"):
        ingest_downstream(tmp_path / "r", msd_root, "bad id'", salt=SALT)
    ingest_downstream(tmp_path / "r2", msd_root, "ok", salt=SALT, voxel_size_mm=None)
    with pytest.raises(KeyError, match="not in the catalog"):
        load_labelled_volumes(tmp_path / "r2", "other")
    with pytest.raises(ValueError, match="split"):
        load_labelled_volumes(tmp_path / "r2", "ok", split="holdout")
