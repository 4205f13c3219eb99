"""Generated variants of the vendor cases: mixed image sets, converter rejections, archives
in zip/gzip, and the PHI audit's notion of an identifier (docs/vendors.md)."""
from __future__ import annotations

import gzip
import shutil
import zipfile

import pydicom
import pytest
from pydicom.uid import generate_uid

from bench import vendor_check
from mrifoundry.tasks.curation.audit.identifiers import Identifiers, collect_identifiers
from tests.dicom_factory import write_series


def _series(folder, **kw):
    return write_series(folder, n_slices=8, **kw)


def test_magnitude_and_phase_become_two_series(tmp_path):
    """Philips/Siemens SWI: magnitude and phase in one series are two catalog series (as dcm2niix's _ph)."""
    uid, study = generate_uid(), generate_uid()
    ids = {"SeriesInstanceUID": uid, "StudyInstanceUID": study, "PatientID": "P1"}
    _series(tmp_path / "a" / "mag", extra=ids, image_type=("ORIGINAL", "PRIMARY", "M", "SWI"))
    _series(tmp_path / "a" / "pha", extra=ids, image_type=("ORIGINAL", "PRIMARY", "P", "SWI"))
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out")
    assert sorted((s.image_set, s.status) for s in res.series) == [("", "ok"), ("phase", "ok")]
    assert res.audit_ok


def test_isotropic_dwi_trace_is_its_own_series(tmp_path):
    """A Philips DWI with its isotropic image (private 2001,1004 = 'I') beside the b=1000 image."""
    uid, study = generate_uid(), generate_uid()
    base = {"SeriesInstanceUID": uid, "StudyInstanceUID": study, "SeriesDescription": "DWI",
            "AcquisitionTime": "100000"}
    for sub, direction, t in (("b1000", "X", "100000"), ("iso", "I", "100100")):
        for path in _series(tmp_path / "a" / sub, extra=dict(base, AcquisitionTime=t)):
            ds = pydicom.dcmread(path)
            ds.private_block(0x2001, "Philips Imaging DD 001", create=True).add_new(0x04, "CS", direction)
            ds.save_as(path)
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out")
    sets = {s.image_set: s for s in res.series}
    assert set(sets) == {"", "trace"}
    assert sets[""].status == "ok" and sets["trace"].status == "ok"
    assert sets[""].shape == sets["trace"].shape   # one volume each, not a 2-time-point series


def test_philips_b0_stays_in_the_dwi_series(tmp_path):
    """Philips marks b=0 with the isotropic 'I' too (2001,1004): the b=0 volume belongs to the DWI
    series (as dcm2niix keeps it), only the b>0 isotropic image is the trace (issue 20)."""
    from mrifoundry.catalog.views import connect
    uid, study = generate_uid(), generate_uid()
    base = {"SeriesInstanceUID": uid, "StudyInstanceUID": study, "SeriesDescription": "DWI"}
    for sub, direction, b, t in (("b0", "I", 0.0, "100000"), ("x", "X", 1000.0, "100100"),
                                 ("iso", "I", 1000.0, "100200")):
        for path in _series(tmp_path / "a" / sub, extra=dict(base, AcquisitionTime=t)):
            ds = pydicom.dcmread(path)
            block = ds.private_block(0x2001, "Philips Imaging DD 001", create=True)
            block.add_new(0x04, "CS", direction)
            block.add_new(0x03, "FL", b)
            ds.save_as(path)
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out")
    sets = {s.image_set: s for s in res.series}
    assert set(sets) == {"", "trace"} and {s.status for s in res.series} == {"ok"}
    con = connect(tmp_path / "out" / "research")
    try:
        n_t = dict(con.execute("SELECT coalesce(image_set, ''), n_timepoints FROM series").fetchall())
    finally:
        con.close()
    assert n_t[""] == 2 and n_t["trace"] in (None, 1)   # b=0 + one direction; the trace alone


def test_converter_rejection_keeps_exam_rows_with_its_code(tmp_path):
    """dicom2nifti refuses 3 slices (TOO_FEW_SLICES/LOCALIZER) that min_slices=3 lets through:
    the series row stays, with the converter's code, and the exam is in the catalog."""
    from mrifoundry.catalog.views import connect
    write_series(tmp_path / "a" / "s", n_slices=3)
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out", min_slices=3)
    assert [(s.status, s.reason) for s in res.series] == [("rejected", "d2n_too_few_slices_localizer")]
    con = connect(tmp_path / "out" / "research")
    try:
        assert con.execute("SELECT count(*) FROM exams").fetchone()[0] == 1
        row = con.execute("SELECT status, message FROM stage_results WHERE stage='convert' AND item_kind='series'").fetchone()
    finally:
        con.close()
    assert row == ("rejected", "dicom2nifti TOO_FEW_SLICES_LOCALIZER")


def test_zip_and_gzip_in_the_archive_are_read(tmp_path):
    src = tmp_path / "src"
    write_series(src / "one", n_slices=6)
    write_series(src / "two", n_slices=6)
    archive = tmp_path / "a"
    (archive / "z").mkdir(parents=True)
    with zipfile.ZipFile(archive / "z" / "study.zip", "w") as zf:
        for f in sorted((src / "one").iterdir()):
            zf.write(f, f"nested/dir/{f.name}")
    (archive / "g").mkdir()
    for f in sorted((src / "two").iterdir()):
        (archive / "g" / (f.name + ".gz")).write_bytes(gzip.compress(f.read_bytes()))
    (archive / "junk").mkdir()
    (archive / "junk" / "broken.zip").write_bytes(b"PK\x03\x04 not really a zip")
    res = vendor_check.curate_case(archive, tmp_path / "out")
    assert sorted((s.status, s.shape is not None) for s in res.series) == [("ok", True), ("ok", True)]
    assert res.dropped == {"container_unreadable": 1}   # the broken container: ledgered, not ignored
    listing = (tmp_path / "out" / "restricted" / "unattributed_files.csv").read_text()
    assert "container_unreadable" in listing and "broken.zip" in listing


def test_audit_vocabulary_is_not_identifying_but_leaks_are(tmp_path):
    """Vendor words in private tags and identifying fields (GE 'RESEARCH', InstitutionName =
    Manufacturer, StationName = model, PatientID 'DICOM') are not identifiers; a private MRN
    copy, a private person name and a real institution are."""
    paths = write_series(tmp_path / "a" / "s", n_slices=6, extra={
        "PatientID": "DICOM", "Manufacturer": "GE MEDICAL SYSTEMS", "InstitutionName": "GE MEDICAL SYSTEMS",
        "ManufacturerModelName": "SIGNA HDxt", "StationName": "SIGNA HDxt"})
    ds = pydicom.dcmread(paths[0])
    block = ds.private_block(0x0043, "GEMS_PARM_01", create=True)
    for i, text in enumerate(["RESEARCH", "FMRI", "SENSE", "ORIGINAL", "fl3d1_ns"]):
        block.add_new(0x10 + i, "LO", text)
    block.add_new(0x20, "LO", "A7731902")          # an id-shaped private value
    block.add_new(0x21, "PN", "ROE^RICHARD")        # a private person name
    ds.save_as(paths[0])
    other = write_series(tmp_path / "a" / "t", n_slices=6, extra={"InstitutionName": "Duke University Hospital"})
    assert other
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out")
    assert res.audit_ok, res.audit_hits          # 0 false hits on the curated output
    ids = collect_identifiers(tmp_path / "out")
    for word in ("research", "fmri", "sense", "original", "dicom", "ge medical systems", "signa hdxt"):
        assert not ids.find(word), word
    assert ids.find("A7731902") == {"private"}
    assert "name" in ids.find("RICHARD ROE")
    assert ids.find("Duke University Hospital") == {"institution"}


def test_audit_skips_non_dicom_source_files(tmp_path):
    """A non-DICOM file in a study folder used to crash the audit (unknown VR while iterating)."""
    write_series(tmp_path / "a" / "s", n_slices=6)
    (tmp_path / "a" / "s" / "notes.txt").write_bytes(b"\x02\x00\x10\x00UX\x04\x00abcd" * 40)
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out")
    assert res.audit_ok
    ids = collect_identifiers(tmp_path / "out")
    assert ids.unreadable_sources == 1


def test_prune_never_drops_names_or_numeric_ids():
    ids = Identifiers()
    ids.add_vocabulary("SMITH JOHN 123456")
    ids.add("SMITH^JOHN", "name")
    ids.add("123456", "mrn")
    ids.add("SMITH", "institution")
    ids.prune()
    assert ids.find("JOHN SMITH") == {"name"} and ids.find("123456") == {"mrn"}
    assert not ids.find("SMITH")


@pytest.mark.parametrize("text, contrast", [("EPI GD0 fMRI", False), ("AX T1 POST GD", True), ("T1 +C", True)])
def test_gd_in_a_name_is_not_gadolinium(text, contrast):
    from pydicom.dataset import Dataset

    from mrifoundry.tasks.curation.continuity.series_meta import is_contrast
    ds = Dataset()
    ds.SeriesDescription = text
    assert is_contrast(ds) is contrast


def test_clean_descriptors_keeps_short_numbers():
    """heudiconv's 'dMRI_mb3_AP_1.5' with StudyID '1' came out 'dMRI_mb3_AP_ .5'; an MRN still goes."""
    from pydicom.dataset import Dataset

    from mrifoundry.tasks.curation.deid.profile import clean_text, phi_pattern
    ds = Dataset()
    ds.StudyID, ds.PatientID, ds.PatientName = "1", "7731902", "ROE^RICHARD"
    pattern = phi_pattern(ds)
    assert clean_text("dMRI_mb3_AP_1.5", pattern) == "dMRI_mb3_AP_1.5"
    assert clean_text("T1 7731902 Roe", pattern) == "T1"
