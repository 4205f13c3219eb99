"""Image/label folders (.mha, .nrrd, .nii.gz, DICOM series + DICOM-SEG), DICOM-SEG case folders,
classification CSVs, layout detection, and the flow's task wrapper."""
from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from mrifoundry.tasks.ingest.labelled3d import ingest_downstream, load_labelled_volumes
from mrifoundry.tasks.ingest.labelled3d.layouts import detect_layout
from mrifoundry.tasks.ingest.labelled3d.readers import read_image
from tests.dicom_factory import AXIAL, pixel_lps, write_series
from tests.ingest.test_labelled3d_dicom_seg import make_seg
from tests.ingest.test_labelled3d_ingest import SALT, labels, ras, save, volume

ORIGIN, SPACING, STEP = (-10.0, -20.0, 30.0), (1.0, 1.5), 2.0  # DICOM series: 4 slices of 6 x 7


def _itk(arr_xyz: np.ndarray, path: Path) -> Path:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr_xyz.transpose(2, 1, 0)))
    img.SetSpacing((0.8, 1.0, 2.5))
    img.SetOrigin((3.0, -4.0, 12.0))
    img.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # i along y, j along -x (LPS)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _seg_frames() -> list:
    """Segment 1 on slices 1 and 2, segment 2 on slice 2 (LPS positions of the factory series)."""
    normal = np.cross(AXIAL[:3], AXIAL[3:])
    m1, m2 = np.zeros((6, 7), np.uint8), np.zeros((6, 7), np.uint8)
    m1[1:4, 2:6], m2[4, 0:3] = 1, 1
    ipp = [tuple(np.array(ORIGIN) + k * STEP * normal) for k in range(4)]
    return [(1, ipp[1], m1), (1, ipp[2], m1), (2, ipp[2], m2)]


def _dicom_case(folder: Path, seg_path: Path) -> None:
    write_series(folder, n_slices=4, rows=6, cols=7, iop=AXIAL, origin=ORIGIN, spacing=SPACING, step=STEP)
    make_seg(seg_path, _seg_frames(), rows=6, cols=7, iop=AXIAL, spacing=SPACING, labels={1: "organ", 2: "lesion"})


def _check_seg_on_image(row: dict) -> None:
    """Every SEG pixel's LPS position lands, in the written label map, on its segment number."""
    lab = nib.load(row["label_file"])
    data, inv = np.asarray(lab.dataobj), np.linalg.inv(lab.affine)
    expected = np.zeros(data.shape, np.uint8)
    for seg, ipp, mask in _seg_frames():
        k = int(round((ipp[2] - ORIGIN[2]) / STEP))
        for r, c in np.argwhere(mask):
            lps = pixel_lps(AXIAL, ORIGIN, SPACING, STEP, r, c, k)
            vox = tuple(np.rint(inv @ np.append(lps * [-1, -1, 1], 1))[:3].astype(int))
            expected[vox] = max(expected[vox], seg)
    assert np.array_equal(data, expected) and int((data > 0).sum()) == 2 * 12 + 3  # segment 1 on 2 slices, 2 on one


def test_folder_layout_mixed_formats(tmp_path):
    root = tmp_path / "folder"
    vol, lab = volume(1).astype(np.float32) / 7, labels((1, 2, 3))
    _itk(vol, root / "images" / "a.mha")
    _itk(lab, root / "labels" / "a.nrrd")
    save(volume(2), root / "images" / "b.nii.gz")
    save(labels(), root / "labels" / "b.nii.gz")
    _dicom_case(root / "images" / "d", root / "labels" / "d.dcm")
    save(volume(3), root / "images" / "lonely.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"labels": {"1": "one"}}))
    assert detect_layout(root) == "folder"
    research = tmp_path / "research"
    res = ingest_downstream(research, root, "mixed", salt=SALT, voxel_size_mm=None)
    assert [s["case"] for s in res["skipped"]] == ["lonely"]
    rows = {r["case_id"]: r for r in load_labelled_volumes(research, "mixed")}
    assert {k: r["source_format"] for k, r in rows.items()} == {"a": "mha", "b": "nifti", "d": "dicom-seg"}
    img_a, _ = read_image(root / "images" / "a.mha")
    assert np.allclose(ras(rows["a"]["image_file"]), np.asarray(img_a.dataobj), atol=1e-6)
    assert np.allclose(nib.load(rows["a"]["image_file"]).affine, img_a.affine)
    assert nib.load(rows["a"]["image_file"]).get_data_dtype() == np.float32
    lab_a, _ = read_image(root / "labels" / "a.nrrd")
    assert np.array_equal(ras(rows["a"]["label_file"]), np.asarray(lab_a.dataobj))
    assert rows["a"]["zooms"] == "1x0.8x2.5"  # RAS: x is ITK's -j (1.0 mm), y is ITK's i (0.8 mm)
    _check_seg_on_image(rows["d"])
    # names: dataset.json's, then the SEG's segment labels, then label_<v>
    assert res["label_names"] == {"0": "background", "1": "one", "2": "lesion", "3": "label_3", "4": "label_4"}


def test_dicom_seg_case_folders(tmp_path):
    root = tmp_path / "segs"
    _dicom_case(root / "case1", root / "case1" / "seg.dcm")
    make_seg(root / "orphan" / "seg.dcm", _seg_frames(), rows=6, cols=7, iop=AXIAL, spacing=SPACING)
    _dicom_case(root / "two", root / "two" / "seg_a.dcm")
    make_seg(root / "two" / "seg_b.dcm", _seg_frames(), rows=6, cols=7, iop=AXIAL, spacing=SPACING)
    assert detect_layout(root) == "dicom-seg"
    research = tmp_path / "research"
    res = ingest_downstream(research, root, "segds", salt=SALT, voxel_size_mm=None, split=(1.0, 0.0, 0.0))
    reasons = {s["case"]: s["reason"] for s in res["skipped"]}
    assert "without its image series" in reasons["orphan"] and "2 DICOM-SEG files" in reasons["two"]
    assert res["label_names"] == {"0": "background", "1": "organ", "2": "lesion"}
    (row,) = load_labelled_volumes(research, "segds")
    assert row["source_format"] == "dicom-seg" and row["shape"] == "7x6x4" and row["label_values"] == "[0, 1, 2]"
    _check_seg_on_image(row)
    # 1 mm resampling keeps the segment on the same world positions (nearest neighbour)
    res1 = ingest_downstream(research, root, "segds1", salt=SALT, split=(1.0, 0.0, 0.0))
    (row1,) = load_labelled_volumes(research, "segds1")
    assert res1["n_volumes"] == 1 and row1["zooms"] == "1x1x1"
    lab = nib.load(row1["label_file"])
    lps = pixel_lps(AXIAL, ORIGIN, SPACING, STEP, 2, 3, 1)  # inside segment 1 on slice 1
    assert np.asarray(lab.dataobj)[tuple(np.rint(np.linalg.inv(lab.affine) @ np.append(lps * [-1, -1, 1], 1))[:3]
                                         .astype(int))] == 1


def test_classification_csv(tmp_path):
    root = tmp_path / "cls"
    save(volume(1), root / "imgs" / "x1.nii.gz")
    _itk(volume(2).astype(np.float32), root / "imgs" / "x2.mha")
    save(volume(3), root / "imgs" / "x3.nii.gz")
    (root / "table.csv").write_text("Image,Label,Patient\nimgs/x1.nii.gz,tumor,P1\nimgs/x2.mha,normal,P1\n"
                                    "imgs/x3.nii.gz,normal,P2\nimgs/missing.nii.gz,tumor,P3\n,normal,P4\n")
    assert detect_layout(root) == "csv" and detect_layout(root / "table.csv") == "csv"
    research = tmp_path / "research"
    res = ingest_downstream(research, root / "table.csv", "cls", salt=SALT, voxel_size_mm=2.0)
    assert res["task"] == "classification" and res["n_volumes"] == 3 and res["n_patients"] == 2
    assert len(res["skipped"]) == 2 and "missing.nii.gz is not a readable image" in res["skipped"][0]["reason"]
    assert res["label_names"] == {"0": "normal", "1": "tumor"}
    rows = {r["case_id"]: r for r in load_labelled_volumes(research, "cls")}
    assert {k: r["class_label"] for k, r in rows.items()} == {"x1": "tumor", "x2": "normal", "x3": "normal"}
    assert all(r["label_path"] is None and r["label_file"] is None and r["label_values"] is None
               for r in rows.values())
    assert rows["x1"]["patient_id"] == rows["x2"]["patient_id"] == "P1"
    assert rows["x1"]["split"] == rows["x2"]["split"] and rows["x1"]["fold"] == rows["x2"]["fold"]
    assert rows["x1"]["subject_key"] == rows["x2"]["subject_key"] != rows["x3"]["subject_key"]
    assert nib.load(rows["x1"]["image_file"]).header.get_zooms() == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="classification"):
        ingest_downstream(research, root, "cls2", salt=SALT, labels={1: 1})
    (root / "bad.csv").write_text("path,class\na,b\n")
    with pytest.raises(ValueError, match="columns image and label"):
        ingest_downstream(research, root / "bad.csv", "cls3", salt=SALT)


def test_unknown_layout(tmp_path):
    (tmp_path / "x").mkdir()
    with pytest.raises(ValueError, match="no known layout"):
        detect_layout(tmp_path / "x")
    with pytest.raises(FileNotFoundError):
        ingest_downstream(tmp_path / "r", tmp_path / "nope", "n", salt=SALT)


def test_the_runner_reads_the_salt_from_out(tmp_path):
    from mrifoundry.params import DownstreamParams
    from mrifoundry.tasks.ingest.runner import run_ingest_downstream
    root = tmp_path / "msd"
    save(volume(1, 2), root / "imagesTr" / "c.nii.gz")
    save(labels(), root / "labelsTr" / "c.nii.gz")
    res = run_ingest_downstream(DownstreamParams(root=str(root), dataset_id="flowds", out=str(tmp_path / "out"),
                                                 labels={"1": 1, "2": 1, "4": 1}, strict_labels=True,
                                                 voxel_size_mm=None, split=(1.0, 0.0, 0.0), folds=None))
    assert res["n_volumes"] == 1 and res["label_names"] == {"0": "background", "1": "label_1+label_2+label_4"}
    assert (tmp_path / "out" / "restricted" / "salt").exists()
