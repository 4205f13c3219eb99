"""The embedded sample archive: requirements, defects, geometry, anatomy, determinism, speed."""
from __future__ import annotations

import copy
import csv
import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from mrifoundry.catalog.reasons import REASONS
from mrifoundry.sample import generate_sample
from mrifoundry.sample.defects import DEFECTS, EXPECTED
from mrifoundry.sample.generate import build_manifest
from mrifoundry.sample.plan import build_plan
from mrifoundry.sample.reports import REPORT_COLUMNS

SEED = 0


@pytest.fixture(scope="module")
def generated(generated_sample):
    # the session's sample (tests/conftest.py), generated with seed 0 and timed there
    assert generated_sample[1]["seed"] == SEED
    return generated_sample


@pytest.fixture(scope="module")
def out(generated) -> Path:
    return generated[0]


@pytest.fixture(scope="module")
def manifest(generated) -> dict:
    return generated[1]


@pytest.fixture(scope="module")
def reports(out) -> list[dict]:
    with open(out / "reports.csv", newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _series(manifest, **where):
    for e in manifest["exams"]:
        for s in e["series"]:
            if all(s.get(k, e.get(k)) == v for k, v in where.items()):
                yield e, s


def _read(out, rel, **kw):
    return pydicom.dcmread(out / "archive" / rel, **kw)


def test_runtime_within_budget(generated):
    assert generated[2] <= 60.0


def test_manifest_file_matches_return_value(out, manifest):
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["seed"] == SEED and manifest["generator_version"]


def test_report_export(reports, manifest):
    assert list(reports[0]) == list(REPORT_COLUMNS)
    assert len(reports) >= 600
    mr = [r for r in reports if r["modality"] == "MR"]
    protocols = Counter(r["report_type"] for r in mr)
    assert len(protocols) >= 15
    for name in ("MRI BRAIN WITHOUT AND WITH CONTRAST", "MRI LEFT SHOULDER WITHOUT CONTRAST",
                 "MRI RIGHT KNEE WITHOUT CONTRAST", "MRI LUMBAR SPINE WITHOUT CONTRAST"):
        assert name in protocols
    for word in ("FACE", "NECK", "ORBITS", "IAC", "PITUITARY", "BREAST", "CARDIAC", "PROSTATE", "LIVER",
                 "PELVIS", "HIP", "ANKLE", "CERVICAL SPINE", "ABDOMEN"):
        assert any(word in p for p in protocols), word
    assert min(protocols.values()) <= 3 and max(protocols.values()) >= 20      # long tail
    years = {r["report_date"][:4] for r in reports}
    assert min(years) == "2014" and max(years) == "2022"
    assert all(len(r["report_date"]) == 10 and r["report_date"][4] == "-" for r in reports)
    assert {"CT", "US", "XR"} <= {r["modality"] for r in reports}
    assert any(r["report_type"] == "CT CHEST WITH CONTRAST" for r in reports)
    per_patient_protocol = Counter((r["patient_mrn"], r["report_type"]) for r in mr)
    assert max(per_patient_protocol.values()) >= 2
    assert len({r["accession_number"] for r in reports}) == len(reports)
    r = mr[0]
    for phi in (r["patient_mrn"], r["patient_birth_date"], r["accession_number"], r["patient_name"]):
        assert phi in r["report_text"]
    assert "REFERRING PHYSICIAN" in r["report_text"]


def test_exams_match_reports_and_folders(out, manifest, reports):
    mr_acc = {r["accession_number"] for r in reports if r["modality"] == "MR"}
    assert {e["accession_number"] for e in manifest["exams"]} == mr_acc
    absent = [e for e in manifest["exams"] if not e["in_archive"]]
    assert 3 <= len(absent) <= 8
    assert all(e["study_dir"] is None and e["expected_reason"] == "accession_not_found" for e in absent)
    layouts = set()
    for e in manifest["exams"]:
        if not e["in_archive"]:
            continue
        layouts.add(e["layout"])
        assert 3 <= len(e["series"]) <= 5
        files = [f for s in e["series"] for f in s["files"]]
        assert all(f.startswith(e["study_dir"] + "/") for f in files)
        on_disk = sorted(str(p.relative_to(out / "archive")) for p in (out / "archive" / e["study_dir"]).rglob("*")
                         if p.is_file())
        assert on_disk == sorted(files)
        for s in e["series"]:
            assert s["n_files"] == len(s["files"])
    assert layouts == {"nested", "flat", "dated"}


def test_every_file_parses_and_decodes(out, manifest):
    skip = {"truncated_file", "non_image_object"}
    n = 0
    for _, s in _series(manifest, in_archive=True):
        if s["defect"] in skip:
            continue
        for rel in s["files"]:
            ds = _read(out, rel)
            assert ds.pixel_array.shape == (s["rows"], s["cols"])
            assert ds.file_meta.TransferSyntaxUID == s["transfer_syntax"]
            n += 1
    assert n == manifest["counts"]["files"] - sum(s["n_files"] for _, s in _series(manifest) if s["defect"] in skip)


def test_headers_full_of_phi(out, manifest):
    exam = next(e for e in manifest["exams"] if e["in_archive"] and not any(s["defect"] for s in e["series"]))
    s = exam["series"][0]
    ds = _read(out, s["files"][0])
    phi = manifest["phi"]
    assert ds.PatientID == exam["patient_mrn"] and ds.AccessionNumber == exam["accession_number"]
    assert str(ds.PatientName) in phi["patient_names"] and ds.PatientBirthDate in phi["birth_dates"]
    assert ds.PatientAddress in phi["addresses"] and ds.PatientTelephoneNumbers in phi["phone_numbers"]
    assert ds.InstitutionName in phi["institutions"] and ds.StationName in phi["station_names"]
    assert ds.DeviceSerialNumber in phi["device_serials"]
    assert str(ds.ReferringPhysicianName) in phi["physicians"] and str(ds.OperatorsName) in phi["physicians"]
    for kw in ("OtherPatientIDs", "StudyID", "InstitutionAddress", "PerformingPhysicianName"):
        assert ds.get(kw)
    assert ds.RequestAttributesSequence[0].AccessionNumber == exam["accession_number"]
    block = ds.private_block(0x0033, "RVMC RIS 1.0")
    assert block[0x11].value == exam["patient_mrn"]
    uids = set(phi["uids"])
    for uid in (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID, ds.FrameOfReferenceUID):
        assert uid in uids
    assert ds.StudyInstanceUID == exam["study_instance_uid"] and ds.SeriesInstanceUID == s["series_instance_uid"]
    assert ds.StudyDate == exam["report_date"].replace("-", "") and ds.StudyDescription == exam["protocol"]
    assert ds.Modality == "MR" and ds.Manufacturer in ("SIEMENS", "GE MEDICAL SYSTEMS", "Philips")
    assert float(ds.MagneticFieldStrength) in (1.5, 3.0)
    for kw in ("RepetitionTime", "EchoTime", "FlipAngle", "ScanningSequence", "SequenceVariant", "SliceThickness",
               "SpacingBetweenSlices", "PixelSpacing", "BodyPartExamined", "SeriesDescription"):
        assert ds.get(kw) not in (None, "")
    assert list(ds.ImageType) == ["ORIGINAL", "PRIMARY", "M", "ND"]
    assert {s2["series_instance_uid"] for _, s2 in _series(manifest, in_archive=True)} <= uids


def test_each_defect_planted_once_as_declared(out, manifest):
    found = Counter(s["defect"] for _, s in _series(manifest) if s["defect"])
    assert found == Counter(DEFECTS)
    for e, s in _series(manifest):
        if not s["defect"]:
            assert (s["expected_status"], s["expected_reason"]) == ("ok", None)
            continue
        assert not e["facial"] and "2016" <= e["report_date"][:4] <= "2020" and e["in_archive"]
        assert (s["expected_status"], s["expected_reason"]) == EXPECTED[s["defect"]]
        if s["expected_reason"]:
            assert s["expected_reason"] in REASONS
        _check_defect_files(out, s)


def _check_defect_files(out, s):
    d = s["defect"]
    if d == "truncated_file":
        with pytest.raises(Exception):
            [_read(out, f).pixel_array for f in s["files"]]
        return
    if d == "non_image_object":
        ds = _read(out, s["files"][0])
        assert "PixelData" not in ds and ds.Modality == "SR"
        return
    dss = [_read(out, f) for f in s["files"]]
    ipps = [tuple(map(float, ds.ImagePositionPatient)) for ds in dss]
    iops = Counter(tuple(map(float, ds.ImageOrientationPatient)) for ds in dss)
    if d == "missing_slice":
        normal = np.cross(*np.reshape(next(iter(iops)), (2, 3)))
        pos = np.sort([np.dot(p, normal) for p in ipps])
        steps = np.round(np.diff(pos), 3)
        assert len(pos) == s["n_slices"] - 1 and sorted(Counter(steps).values()) == [1, len(pos) - 2]
    elif d == "localizer_mixed":
        loc = [ds for ds in dss if "LOCALIZER" in ds.ImageType]
        assert len(loc) == 1 and len(iops) == 2 and min(iops.values()) == 1
    elif d == "mixed_orientation":
        assert len(iops) == 2 and min(iops.values()) >= 2
        assert len({ds.SeriesInstanceUID for ds in dss}) == 1
    elif d == "duplicate_position":
        dup = [p for p, c in Counter(ipps).items() if c == 2]
        assert len(dup) == 1
        pair = [ds for ds, p in zip(dss, ipps) if p == dup[0]]
        assert pair[0].SOPInstanceUID != pair[1].SOPInstanceUID
        assert not np.array_equal(pair[0].pixel_array, pair[1].pixel_array)
    elif d.startswith("dce_"):
        assert s["n_timepoints"] >= 3 and len(dss) == s["n_slices"] * s["n_timepoints"]
        first = sorted(dss, key=lambda ds: int(ds.InstanceNumber))[:2]
        same_t = first[0].TemporalPositionIdentifier == first[1].TemporalPositionIdentifier
        assert same_t == (d == "dce_time_major")
    elif d in ("jpeg2000_lossless", "jpegls_lossless", "rle_lossless"):
        assert all(ds.file_meta.TransferSyntaxUID.is_compressed for ds in dss)
    elif d == "burned_in_annotation":
        assert all(ds.BurnedInAnnotation == "YES" for ds in dss)
    elif d == "blank_series":
        assert all(not ds.pixel_array.any() for ds in dss)
    elif d == "non_mr_modality":
        assert all(ds.Modality == "CT" for ds in dss)
    elif d == "too_few_slices":
        assert len(dss) == 2


def test_clean_series_geometry(out, manifest):
    orientations = Counter()
    for i, (_, s) in enumerate(_series(manifest, defect=None, in_archive=True)):
        orientations[s["orientation"]] += 1
        if i % 4 and s["orientation"] != "oblique":   # a quarter of the series keeps the test fast
            continue
        dss = [_read(out, f, stop_before_pixels=True) for f in s["files"]]
        iop = np.array(dss[0].ImageOrientationPatient, dtype=float)
        normal = np.cross(iop[:3], iop[3:])
        assert abs(np.linalg.norm(normal) - 1) < 1e-4
        assert all(np.allclose(ds.ImageOrientationPatient, iop) for ds in dss)
        pos = np.sort([np.dot(np.array(ds.ImagePositionPatient, dtype=float), normal) for ds in dss])
        assert np.allclose(np.diff(pos), float(dss[0].SpacingBetweenSlices), atol=1e-3)
        if s["orientation"] == "axial":
            assert abs(normal[2]) > 0.99
        elif s["orientation"] == "oblique":
            assert np.max(np.abs(normal)) < 0.9
    assert {"axial", "coronal", "sagittal", "oblique"} <= set(orientations)


def _mni_sample(ds, t1, affine):
    """Template intensity at each pixel (independent of the generator's own code)."""
    iop = np.array(ds.ImageOrientationPatient, dtype=float)
    ps = [float(v) for v in ds.PixelSpacing]
    r, c = np.mgrid[0: ds.Rows, 0: ds.Columns]
    lps = (np.array(ds.ImagePositionPatient, dtype=float)[:, None, None] + iop[:3, None, None] * c * ps[1]
           + iop[3:, None, None] * r * ps[0])
    ras = np.stack([-lps[0], -lps[1], lps[2], np.ones_like(lps[0])])
    vox = np.tensordot(np.linalg.inv(affine), ras, axes=1)[:3]
    return ndimage.map_coordinates(t1, vox, order=1)


def test_brain_pixels_follow_mni_anatomy(out, manifest):
    from nilearn.datasets import load_mni152_template

    img = load_mni152_template(resolution=1)
    t1, affine = img.get_fdata(), img.affine
    checked = 0
    for e, s in _series(manifest, protocol="MRI BRAIN WITHOUT CONTRAST", defect=None, in_archive=True):
        if s["series_description"] not in ("SAG T1 SE", "AX T2 TSE") or checked >= 4:
            continue
        ds = _read(out, s["files"][len(s["files"]) // 2])
        ref = _mni_sample(ds, t1, affine)
        brain = ref > 0.2 * ref.max()
        r = np.corrcoef(ds.pixel_array[brain].astype(float), ref[brain])[0, 1]
        # T1 follows the (T1-weighted) template; T2 inverts WM/GM contrast
        assert (r > 0.5) if s["sequence_type"] == "T1" else (r < -0.2), (s["series_description"], r)
        checked += 1
    assert checked >= 2


def test_dicom2nifti_reads_clean_series(tmp_path, out, manifest):
    import dicom2nifti.convert_dicom as cd

    e, s = next(_series(manifest, defect=None, orientation="oblique", in_archive=True))
    dss = [_read(out, f) for f in s["files"]]
    result = cd.dicom_array_to_nifti(dss, str(tmp_path / "s.nii.gz"), reorient_nifti=True)
    assert sorted(result["NII"].shape) == sorted((s["rows"], s["cols"], s["n_slices"]))


def test_fast_writer_is_byte_identical_to_pydicom(tmp_path, out, manifest):
    from io import BytesIO

    from mrifoundry.sample import dicomwrite
    from mrifoundry.sample.fastwrite import SeriesWriter

    for implicit in (False, True):
        _, s = next(_series(manifest, defect=None, in_archive=True))
        ds = _read(out, s["files"][0])
        if implicit:
            ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
        values = {t: ds[t].value for t in dicomwrite.DYNAMIC if t in ds}
        values[0x00080018] = "1.2.3.4.5"
        template = copy.deepcopy(ds)
        for t in dicomwrite.DYNAMIC:
            if t in template:
                del template[t]
        fast = SeriesWriter(template, dicomwrite.DYNAMIC).encode(values)
        slow = BytesIO()
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5"
        ds.save_as(slow, enforce_file_format=True)
        assert fast == slow.getvalue()


def test_same_seed_same_bytes_other_seed_differs(tmp_path, out, manifest):
    again = generate_sample(tmp_path / "again", seed=SEED, workers=2)
    assert again == manifest
    assert (tmp_path / "again" / "manifest.json").read_bytes() == (out / "manifest.json").read_bytes()
    assert (tmp_path / "again" / "reports.csv").read_bytes() == (out / "reports.csv").read_bytes()
    files = [f for _, s in _series(manifest, in_archive=True) for f in s["files"]][::97]
    for rel in files:
        a = hashlib.sha256((out / "archive" / rel).read_bytes()).hexdigest()
        b = hashlib.sha256((tmp_path / "again" / "archive" / rel).read_bytes()).hexdigest()
        assert a == b, rel
    other = build_manifest(build_plan(SEED + 1), {})
    assert other["phi"]["accession_numbers"] != manifest["phi"]["accession_numbers"]
    assert [e["study_instance_uid"] for e in other["exams"]] != [e["study_instance_uid"] for e in manifest["exams"]]
