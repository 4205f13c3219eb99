"""Header values that cannot be coerced to their type (issue 19, part 4).

Each case writes a small study — the malformed series next to a clean control — with the
bad-input writers, de-identifies it through the real stage (``deidentify_exam``), checks that
the malformed value survived de-identification (else the case plants it in the de-identified
files, saying why), then runs ``check_series``:

* a value the volume needs (pixel module, geometry, the temporal key that groups a 4D series)
  rejects its series as ``malformed_header`` with a message that names the attribute keyword
  and never the value;
* a value only used for catalog metadata (TR, TE, flip angle, field strength, thickness,
  descriptions, window) is ``None`` in the metadata and the series converts;
* the control series always converts (PNG + NIfTI).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.tag import Tag

from mrifoundry.catalog.reasons import REASONS
from mrifoundry import ids
from mrifoundry.errors import RejectedItem
from mrifoundry.params import CurateParams
from mrifoundry.tasks.curation.continuity.checks import ContinuityConfig, check_series
from mrifoundry.tasks.curation.convert.nifti import NiftiConfig, volumes_to_nifti
from mrifoundry.tasks.curation.convert.png import volume_to_png
from mrifoundry.tasks.curation.deid.deidentify import DeidConfig, PseudonymStore, deidentify_exam
from tests.badinput.writers import Study

SALT = "malformed-header-test-salt"
CFG = ContinuityConfig()
N = 6                      # images per 3D series (min_slices is 5)
STEP = 3.0                 # Study.series default slice step, mm
# 4D: two time points of five positions each, no temporal tag unless the case adds one
POSITIONS_4D = [STEP * k for k in range(5)] * 2


def _tag(keyword: str) -> Tag:
    return Tag(tag_for_keyword(keyword))


def raw(keyword: str, vr: str, text: str) -> RawDataElement:
    """An element whose stored bytes are exactly ``text`` (pydicom writes raw elements unchanged)."""
    value = text.encode("latin-1")
    value += b" " * (len(value) % 2)
    return RawDataElement(_tag(keyword), vr, len(value), value, 0, False, True)


def wrong_vr(keyword: str, vr: str, value) -> DataElement:
    """The attribute stored under another VR (``Rows`` as LO text): pydicom keeps the value as is."""
    return DataElement(_tag(keyword), vr, value)


def _text(value) -> str:
    return "\\".join(map(str, value)) if isinstance(value, (list, MultiValue)) else str(value)


@dataclass(frozen=True)
class Case:
    keyword: str
    element: Callable[[int], DataElement | RawDataElement | None]   # image index -> element (None: leave)
    stored: str                       # the planted value as text (VM joined by backslash): never in a message
    rejected: bool = True             # malformed_header; else the series converts and the meta key is None
    meta_key: str | None = None
    positions: list[float] | None = None
    after_deid: str = ""              # why the value is planted after de-identification ("" = before)
    pixel_vr_ow: bool = False         # PixelData written as OW (pydicom derives OB/OW from BitsAllocated)


def _all(el):
    return lambda k: el


CASES: dict[str, Case] = {
    # pixel module: the volume cannot be decoded without these
    "rows_text_as_LO": Case("Rows", _all(wrong_vr("Rows", "LO", "64x")), "64x"),
    "rows_two_values": Case("Rows", _all(wrong_vr("Rows", "US", [32, 32])), "32\\32"),
    "columns_text_as_LO": Case("Columns", _all(wrong_vr("Columns", "LO", "abc")), "abc"),
    "bits_allocated_text": Case("BitsAllocated", _all(wrong_vr("BitsAllocated", "LO", "sixteen")), "sixteen",
                                pixel_vr_ow=True),
    "bits_stored_text": Case("BitsStored", _all(wrong_vr("BitsStored", "LO", "twelve")), "twelve"),
    "pixel_representation_text": Case("PixelRepresentation",
                                      _all(wrong_vr("PixelRepresentation", "LO", "unsigned")), "unsigned"),
    "samples_per_pixel_text": Case("SamplesPerPixel", _all(wrong_vr("SamplesPerPixel", "LO", "one")), "one"),
    "number_of_frames_text": Case("NumberOfFrames", _all(raw("NumberOfFrames", "IS", "1x")), "1x"),
    "rescale_slope_text": Case("RescaleSlope", _all(raw("RescaleSlope", "DS", "slope")), "slope"),
    "rescale_intercept_two_values": Case("RescaleIntercept", _all(raw("RescaleIntercept", "DS", "0\\1")), "0\\1"),
    # geometry
    "pixel_spacing_one_value": Case("PixelSpacing", _all(raw("PixelSpacing", "DS", "0.8")), "0.8"),
    "pixel_spacing_text": Case("PixelSpacing", _all(raw("PixelSpacing", "DS", "abc\\def")), "abc\\def"),
    "position_two_values": Case("ImagePositionPatient", lambda k: raw("ImagePositionPatient", "DS", f"{k}\\2"),
                                "3\\2"),
    "position_text": Case("ImagePositionPatient", lambda k: raw("ImagePositionPatient", "DS", "left\\bk\\zq")
                          if k == 3 else None, "left\\bk\\zq"),
    "orientation_five_values": Case("ImageOrientationPatient",
                                    _all(raw("ImageOrientationPatient", "DS", "1\\0\\0\\0\\1")), "1\\0\\0\\0\\1"),
    "orientation_text": Case("ImageOrientationPatient",
                             _all(raw("ImageOrientationPatient", "DS", "1\\0\\0\\0\\1\\zz")), "1\\0\\0\\0\\1\\zz"),
    # ImageType drives localizer/derived removal: a number there is unreadable, not "ORIGINAL"
    "image_type_number": Case("ImageType", _all(wrong_vr("ImageType", "US", 5)), "5",
                              after_deid="deidentify_exam raises TypeError on a numeric ImageType (_burned_in)"),
    # temporal keys that group a 4D series (positions repeat)
    "temporal_position_text": Case("TemporalPositionIdentifier",
                                   lambda k: raw("TemporalPositionIdentifier", "IS", "1" if k < 5 else "two"),
                                   "two", positions=POSITIONS_4D),
    "echo_numbers_text": Case("EchoNumbers", lambda k: raw("EchoNumbers", "IS", "1" if k < 5 else "x"), "x",
                              positions=POSITIONS_4D),
    "acquisition_time_garbage": Case("AcquisitionTime",
                                     lambda k: raw("AcquisitionTime", "TM", "10h00" if k < 5 else "10h01"),
                                     "10h01", positions=POSITIONS_4D),
    "trigger_time_text": Case("TriggerTime", lambda k: raw("TriggerTime", "DS", "0" if k < 5 else "late"),
                              "late", positions=POSITIONS_4D),
    "instance_number_dotted_4d": Case("InstanceNumber", lambda k: raw("InstanceNumber", "IS", "1.5.7")
                                      if k == 7 else None, "1.5.7", positions=POSITIONS_4D),
    # catalog metadata only: unknown (None), the series converts
    "slice_thickness_text": Case("SliceThickness", _all(raw("SliceThickness", "DS", "abc")), "abc",
                                 rejected=False, meta_key="slice_thickness"),
    "repetition_time_text": Case("RepetitionTime", _all(raw("RepetitionTime", "DS", "abc")), "abc",
                                 rejected=False, meta_key="repetition_time"),
    "echo_time_two_texts": Case("EchoTime", _all(raw("EchoTime", "DS", "x\\y")), "x\\y",
                                rejected=False, meta_key="echo_time"),
    "flip_angle_text": Case("FlipAngle", _all(raw("FlipAngle", "DS", "ninety")), "ninety",
                            rejected=False, meta_key="flip_angle"),
    "field_strength_text": Case("MagneticFieldStrength", _all(raw("MagneticFieldStrength", "DS", "3T")), "3T",
                                rejected=False, meta_key="field_strength"),
    "manufacturer_number": Case("Manufacturer", _all(wrong_vr("Manufacturer", "US", 7)), "7",
                                rejected=False, meta_key="manufacturer"),
    "window_center_text": Case("WindowCenter", _all(raw("WindowCenter", "DS", "mid\\dle")), "mid\\dle",
                               rejected=False),
    # temporal keys in a 3D series are not used: garbage there does not matter
    "echo_numbers_text_3d": Case("EchoNumbers", _all(raw("EchoNumbers", "IS", "x")), "x", rejected=False),
    "acquisition_time_garbage_3d": Case("AcquisitionTime", _all(raw("AcquisitionTime", "TM", "garbage!")),
                                        "garbage!", rejected=False),
    "instance_number_dotted_3d": Case("InstanceNumber", _all(raw("InstanceNumber", "IS", "1.5.7")), "1.5.7",
                                      rejected=False),
}


def _plant(case: Case, ds: Dataset, k: int) -> None:
    el = case.element(k)
    if case.pixel_vr_ow:
        ds["PixelData"].VR = "OW"
    if el is not None:
        ds[el.tag] = el


@dataclass
class Exam:
    bad: list[Path]          # de-identified files of the malformed series
    control: list[Path]      # de-identified files of the clean series


def _write_and_deidentify(tmp_path: Path, name: str, case: Case) -> Exam:
    study = Study(tmp_path / "archive", name, 1)
    plant_before = not case.after_deid
    n = len(case.positions) if case.positions else N
    bad_uid, _ = study.series("bad", n=n, positions=case.positions, number=1,
                              mutate=(lambda ds, k: _plant(case, ds, k)) if plant_before else None)
    control_uid, _ = study.series("ctl", number=2, description="T1 SE AX")
    store = PseudonymStore(tmp_path / "restricted" / "pseudonyms.sqlite", SALT)
    res = deidentify_exam(sorted(study.folder.rglob("*.dcm")), tmp_path / "deid", "e0000000000000001",
                          DeidConfig(SALT), store)
    assert res.rejected == []
    by_id = {s.series_id: s.files for s in res.series}
    bad, control = by_id[ids.series_id(bad_uid, SALT)], by_id[ids.series_id(control_uid, SALT)]
    if not plant_before:   # plant it in the de-identified files (case.after_deid says why)
        for path in bad:
            ds = pydicom.dcmread(path)
            _plant(case, ds, int(ds.InstanceNumber) - 1)
            ds.save_as(path, enforce_file_format=True)
    _assert_survived(case, bad)
    return Exam(bad, control)


def _assert_survived(case: Case, files: list[Path]) -> None:
    """De-identification keeps these attributes: the planted value must still be there."""
    tag = _tag(case.keyword)
    found = set()
    for path in files:
        ds = pydicom.dcmread(path)
        if tag in ds:
            found.add(_text(ds[tag].value))
    assert case.stored in found, f"{case.keyword}: the planted value did not survive de-identification"


def _convert(chk, tmp_path: Path, label: str) -> None:
    """A checked series converts: one PNG per image, one NIfTI."""
    assert chk.status == "ok", (chk.reason, chk.message)
    slices = [s for v in chk.volumes for s in volume_to_png(v, tmp_path / "png" / label)]
    assert len(slices) == sum(len(v.files) for v in chk.volumes)
    rec = volumes_to_nifti(chk.volumes, tmp_path / "nifti" / f"{label}.nii.gz", NiftiConfig(voxel_size_mm=None))
    assert rec.path.is_file() and len(rec.shape) == 3


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_value(name, tmp_path):
    case = CASES[name]
    exam = _write_and_deidentify(tmp_path, name, case)

    result = check_series("s-bad", exam.bad, CFG)
    if case.rejected:
        assert (result.status, result.reason) == ("rejected", "malformed_header"), (result.reason, result.message)
        assert REASONS["malformed_header"][:2] == ("continuity", "rejected")
        assert result.message.startswith(f"{case.keyword}: "), result.message
        assert result.volumes == []
        # PHI rule: the message names the tag, never the value (single digits are counts)
        why = result.message.removeprefix(f"{case.keyword}: ")
        assert not [p for p in case.stored.split("\\") if (len(p) > 1 or not p.isdigit()) and p in why], why
    else:
        assert result.status == "ok", (result.reason, result.message)
        if case.meta_key:
            assert result.meta[case.meta_key] is None
        _convert(result, tmp_path, "bad")

    control = check_series("s-ctl", exam.control, CFG)
    _convert(control, tmp_path, "control")
    assert control.meta["slice_thickness"] == 1.0 and control.meta["rows"] == 32


def test_malformed_values_never_end_as_failed_in_the_pipeline(tmp_path):
    """Through the plain stage runners: the malformed series is a rejected ledger row, the
    control converts, nothing is ``failed`` (a failed row is retried on every run, exit 1)."""
    from mrifoundry.tasks.curation.stages import curate_exam
    from mrifoundry.tasks.curation.selection.exams import select_exams
    from mrifoundry.tasks.curation.workspace import Workspace

    study = Study(tmp_path / "archive", "pipeline", 1)
    rows_uid, _ = study.series("rows", number=1, mutate=lambda ds, k: _plant(CASES["rows_text_as_LO"], ds, k))
    spacing_uid, _ = study.series("spacing", number=2,
                                  mutate=lambda ds, k: _plant(CASES["pixel_spacing_text"], ds, k))
    tr_uid, _ = study.series("tr", number=3, mutate=lambda ds, k: _plant(CASES["repetition_time_text"], ds, k))
    control_uid, _ = study.series("ctl", number=4)
    ws = Workspace(tmp_path / "out")
    params = CurateParams(archive=str(study.folder), reports=None, out=str(ws.out), workers=1, voxel_size_mm=None)
    (exam_id,) = select_exams(ws, params).exam_ids
    curate_exam(ws, params, exam_id)
    ledger = [r for r in ws.ledger.to_arrow().to_pylist() if r["exam_id"] == exam_id]
    assert [(r["item_id"], r["stage"], r["reason"]) for r in ledger if r["status"] == "failed"] == []
    series = {(r["item_id"], r["stage"]): r for r in ledger}
    for uid, keyword in ((rows_uid, "Rows"), (spacing_uid, "PixelSpacing")):
        row = series[(ids.series_id(uid, ws.salt), "continuity")]
        assert (row["status"], row["reason"]) == ("rejected", "malformed_header")
        assert row["message"].startswith(f"{keyword}: ")
    for uid in (tr_uid, control_uid):
        assert series[(ids.series_id(uid, ws.salt), "convert")]["status"] == "done"
    assert all(series[(exam_id, stage)]["status"] == "done"
               for stage in ("retrieve", "deid", "continuity", "convert", "catalog"))


def _checked_clean_series(tmp_path: Path):
    study = Study(tmp_path / "archive", "converter", 1)
    _, files = study.series("a", n=N)
    result = check_series("s1", files, CFG)
    assert result.status == "ok"
    return result


@pytest.mark.parametrize("element, png_reads_it", [
    (raw("RescaleSlope", "DS", "abc"), True), (raw("RescaleIntercept", "DS", "NaN"), True),
    (raw("ImagePositionPatient", "DS", "1\\2"), False), (wrong_vr("BitsStored", "LO", "twelve"), False),
], ids=["slope_text", "intercept_nan", "position_two_values", "bits_stored_text"])
def test_converters_reject_unreadable_values_they_need(tmp_path, element, png_reads_it):
    """Past continuity (a file changed under it, or a direct call), the converters reject with
    malformed_header through RejectedItem instead of failing with convert_error."""
    result = _checked_clean_series(tmp_path)
    keyword = pydicom.datadict.keyword_for_tag(element.tag)
    path = result.volumes[0].files[2]
    ds = pydicom.dcmread(path)
    ds[element.tag] = element
    ds.save_as(path, enforce_file_format=True)
    converters = [lambda: volumes_to_nifti(result.volumes, tmp_path / "nifti" / "s1.nii.gz")]
    if png_reads_it:
        converters.append(lambda: volume_to_png(result.volumes[0], tmp_path / "png" / "s1"))
    for convert in converters:
        with pytest.raises(RejectedItem) as err:
            convert()
        assert (err.value.reason, err.value.item_id) == ("malformed_header", "s1")
        assert err.value.message.startswith(f"{keyword}: ")


@pytest.mark.parametrize("elements", [
    [raw("WindowCenter", "DS", "abc"), raw("WindowWidth", "DS", "1\\x")],
    [raw("RepetitionTime", "DS", "long"), raw("EchoTime", "DS", "1\\2")],
    [raw("SliceThickness", "DS", "thin")],
    [wrong_vr("Manufacturer", "FD", 2.5)],
    [wrong_vr("ImageType", "US", 1)],
    [wrong_vr("HighBit", "LO", "x"), wrong_vr("BitsStored", "US", 12)],
    [raw("HighBit", "UI", "MR\\\\DERIVED")],   # found by the fuzz test: a UI value cannot hold the repair
], ids=["window", "tr_te", "thickness", "manufacturer", "image_type", "high_bit", "high_bit_as_uid"])
def test_converters_ignore_unreadable_values_they_do_not_need(tmp_path, elements):
    """Values the voxels do not depend on: treated as absent by both converters."""
    result = _checked_clean_series(tmp_path)
    for path in result.volumes[0].files:
        ds = pydicom.dcmread(path)
        for element in elements:
            ds[element.tag] = element
        ds.save_as(path, enforce_file_format=True)
    slices = volume_to_png(result.volumes[0], tmp_path / "png" / "s1")
    assert len(slices) == N and all(np.isfinite(s.min_value) for s in slices)
    rec = volumes_to_nifti(result.volumes, tmp_path / "nifti" / "s1.nii.gz", NiftiConfig(voxel_size_mm=None))
    assert sorted(rec.shape) == sorted((32, 32, N))
