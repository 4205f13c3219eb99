"""Every Table E.1-1 action code on real headers (pydicom's bundled MR files, pydicom-data when
installed, the sample archive), the safe-private allowlist, screenshot rejection, overlays and
curves, and cross-exam consistency for one patient."""
from __future__ import annotations

import datetime as dt

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mrifoundry.tasks.curation.deid import profile as deid_profile
from mrifoundry.tasks.curation.deid.deidentify import DeidConfig, PseudonymStore, _burned_in, deidentify_dataset, remap_uid, shift_date

SALT = "actions-salt"
CFG = DeidConfig(SALT)
REAL = ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "emri_small.dcm", "MR2_UNCR.dcm",
        "MR-SIEMENS-DICOM-WithOverlays.dcm"]
# A value per VR to inject a table attribute into a real header.
VALUE = {"PN": "DOE^JANE", "DA": "20190612", "TM": "101500", "DT": "20190612101500", "UI": "1.2.3.999.1",
         "AS": "061Y", "DS": "1.5", "IS": "7", "US": 3, "SS": 3, "UL": 3, "FD": 1.0, "FL": 1.0,
         "OB": b"PHI!", "OW": b"PHI!", "UN": b"PHI!", "AT": 0x00100010}


def _real(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} needs pydicom-data")
    return pydicom.dcmread(path)


@pytest.fixture
def store(tmp_path):
    s = PseudonymStore(tmp_path / "pseudonyms.sqlite", SALT)
    yield s
    s.close()


def _check(orig: pydicom.DataElement, out: Dataset, action: str, shift: int) -> None:
    """The output element honours ``action`` (PS3.15 Table E.1-1 semantics, docs/deid.md)."""
    tag = orig.tag
    if action == "X":
        assert tag not in out, orig.keyword
        return
    assert tag in out, (orig.keyword, action)
    new = out[tag]
    if orig.VR == "SQ":
        assert len(new.value) == (0 if action == "Z" else len(orig.value)), orig.keyword
    elif action == "K":
        assert new.value == orig.value, orig.keyword
    elif action == "Z":
        assert new.is_empty, orig.keyword
    elif action == "U" or (action == "D" and orig.VR == "UI"):
        assert new.value == remap_uid(orig.value, SALT), orig.keyword
    elif action == "D" and orig.VR in deid_profile._TEXT_VRS and not orig.is_empty:
        assert new.value != orig.value and not new.is_empty, orig.keyword
    elif action == "C" and orig.VR == "DA":
        assert new.value == shift_date(orig.value, shift), orig.keyword
    elif action == "C" and orig.VR == "PN":
        assert new.is_empty


def _walk_and_check(orig: Dataset, out: Dataset, actions, shift: int, seen: set) -> None:
    for elem in orig:
        act = actions.action_for(int(elem.tag))
        if act is None or elem.tag.group in (0x0008, 0x0010, 0x0020) and elem.keyword in (
                "PatientName", "PatientID", "AccessionNumber", "StudyID"):
            continue   # unlisted, or overwritten with pseudonyms after cleaning
        _check(elem, out, act, shift)
        seen.add(act)
        if elem.VR == "SQ" and act not in ("X", "Z"):
            for a, b in zip(elem.value, out[elem.tag].value):
                _walk_and_check(a, b, actions, shift, seen)


@pytest.mark.parametrize("name", REAL)
def test_real_headers_follow_their_actions(name, store):
    ds = _real(name)
    out = deidentify_dataset(ds, CFG, store, "e0000000000000001")
    actions = deid_profile.build_action_map(CFG.options, str(ds.SOPClassUID))
    seen: set = set()
    _walk_and_check(ds, out, actions, store.date_shift_days(str(ds.get("PatientID", "")).strip()
                                                            or "study:" + str(ds.StudyInstanceUID)), seen)
    assert {"X", "U"} <= seen
    assert not any(e.tag.is_private for e in out) and not any(0x5000 <= e.tag.group <= 0x60FF for e in out)
    pydicom.dcmread(pydicom.filebase.DicomBytesIO(_bytes(out)))   # still valid DICOM


def _bytes(ds: Dataset) -> bytes:
    buf = pydicom.filebase.DicomBytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _rows_by_code() -> dict[str, deid_profile.ProfileRow]:
    """One injectable row per code of the table (Basic Profile codes and option codes)."""
    rows: dict[str, deid_profile.ProfileRow] = {}
    for row in deid_profile.load_table():
        if (not row.keyword or "X" in row.tag or row.keyword in ("PatientName", "PatientID", "AccessionNumber",
                                                                 "StudyID") or not pydicom.datadict.tag_for_keyword(row.keyword)):
            continue   # repeating groups and private rows are tested on real overlays/private tags
        vr = pydicom.datadict.dictionary_VR(row.keyword)
        if vr in VALUE or vr in deid_profile._TEXT_VRS or vr == "SQ":
            rows.setdefault(row.basic_profile, row)
            for opt, code in row.options.items():
                rows.setdefault(f"{opt}:{code}", row)
    return rows


ROWS = _rows_by_code()


def test_every_code_of_the_table_is_exercised():
    codes = {r.basic_profile for r in deid_profile.load_table()}
    assert codes <= set(ROWS) and {"D", "Z", "X", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"} <= codes
    assert {k.split(":")[1] for k in ROWS if ":" in k} >= {"K", "C"}


@pytest.mark.parametrize("key", sorted(ROWS))
@pytest.mark.parametrize("retain_chars", [False, True])
def test_each_code_on_a_real_header(key, retain_chars, store):
    row = ROWS[key]
    opts = CFG.options + (("retain_patient_characteristics",) if retain_chars else ())
    if ":" in key and key.split(":")[0] not in opts:
        opts = opts + (key.split(":")[0],)
    ds = _real("MR_small.dcm")
    vr = pydicom.datadict.dictionary_VR(row.keyword).split(" or ")[0]
    if vr == "SQ":
        item = Dataset()
        item.PatientName, item.ReferencedSOPInstanceUID = "DOE^JANE", "1.2.3.999.2"
        setattr(ds, row.keyword, Sequence([item]))
    else:
        ds.add_new(pydicom.datadict.tag_for_keyword(row.keyword), vr, VALUE.get(vr, "JANE DOE 1234567"))
    actions = deid_profile.build_action_map(tuple(dict.fromkeys(opts)), str(ds.SOPClassUID))
    ctx = deid_profile.ActionContext(actions, SALT, 30, deid_profile.phi_pattern(ds))
    out = deid_profile.clean_dataset(ds, ctx)
    act = actions.action_for(pydicom.datadict.tag_for_keyword(row.keyword))
    assert act in {"D", "Z", "X", "K", "C", "U"}
    _check(ds[row.keyword], out, act, 30)
    if vr == "SQ" and act not in ("X", "Z"):
        assert "PatientName" not in out[row.keyword].value[0] or out[row.keyword].value[0].PatientName == ""


def test_safe_private_allowlist_keeps_only_listed_offsets(store):
    ds = _real("MR_small.dcm")
    ds.private_block(0x0029, "SAFE VENDOR", create=True).add_new(0x08, "DS", "2.5")
    ds.private_block(0x0029, "SAFE VENDOR").add_new(0x09, "LO", "DOE^JANE")
    ds.private_block(0x0031, "OTHER", create=True).add_new(0x08, "DS", "2.5")
    default = deidentify_dataset(ds, CFG, store, "e1")
    assert not any(e.tag.is_private for e in default)
    cfg = DeidConfig(SALT, safe_private=((0x0029, "SAFE VENDOR", 0x08),))
    out = deidentify_dataset(ds, cfg, store, "e1")
    private = {int(e.tag): e.value for e in out if e.tag.is_private}
    assert private == {0x00290010: "SAFE VENDOR", 0x00291008: "2.5"}
    assert "113111" in {i.CodeValue for i in out.DeidentificationMethodCodeSequence}


@pytest.mark.parametrize("attrs, rejected", [
    ({"BurnedInAnnotation": "YES"}, True), ({"BurnedInAnnotation": "NO"}, False),
    ({"ImageType": ["DERIVED", "SECONDARY", "SCREEN SAVE"]}, True), ({"ImageType": ["ORIGINAL", "PRIMARY"]}, False),
    ({"ImageType": ["DERIVED", "SECONDARY", "MPR"]}, False),   # continuity rejects it as derived_series
    ({"ConversionType": "WSD"}, True), ({"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}, True),
])
def test_burned_in_policy(attrs, rejected):
    ds = _real("MR_small.dcm")
    for k, v in attrs.items():
        setattr(ds, k, v)
    assert _burned_in(ds) is rejected


def test_overlays_removed_from_real_file(store):
    ds = _real("MR-SIEMENS-DICOM-WithOverlays.dcm")
    assert any(0x6000 <= e.tag.group <= 0x60FF for e in ds)
    out = deidentify_dataset(ds, CFG, store, "e1")
    assert not any(0x6000 <= e.tag.group <= 0x60FF for e in out)


def test_one_patient_two_sample_exams_are_consistent(manifest, sample, tmp_path):
    """Two exams of one patient: same pseudonym and shift; each UID remaps to one value."""
    by_mrn: dict[str, list[dict]] = {}
    for e in manifest["exams"]:
        if e.get("in_archive") and e.get("study_dir"):
            by_mrn.setdefault(e["patient_mrn"], []).append(e)
    pair = next((v[:2] for v in by_mrn.values() if len(v) >= 2), None)
    if pair is None:
        pytest.skip("the sample has no patient with two exams")
    store = PseudonymStore(tmp_path / "p.sqlite", SALT)
    outs = []
    for i, e in enumerate(pair):
        f = sample / "archive" / e["series"][0]["files"][0]
        src = pydicom.dcmread(f)
        outs.append((src, deidentify_dataset(src, CFG, store, f"e{i}")))
    (s1, o1), (s2, o2) = outs
    assert o1.PatientID == o2.PatientID == o1.PatientName
    gap = dt.datetime.strptime(s2.StudyDate, "%Y%m%d") - dt.datetime.strptime(s1.StudyDate, "%Y%m%d")
    assert dt.datetime.strptime(o2.StudyDate, "%Y%m%d") - dt.datetime.strptime(o1.StudyDate, "%Y%m%d") == gap
    assert o1.StudyInstanceUID == remap_uid(s1.StudyInstanceUID, SALT) != o2.StudyInstanceUID
    assert o1.file_meta.MediaStorageSOPInstanceUID == o1.SOPInstanceUID
    store.close()
