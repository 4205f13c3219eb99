"""Header-derived series metadata: sequence type, plane, body part, contrast."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from mrifoundry.tasks.curation.continuity import series_meta
from tests import dicom_factory as f


def _ds(**tags) -> Dataset:
    ds = Dataset()
    for k, v in tags.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize("description, expected", [
    ("AX T2 FLAIR", "FLAIR"), ("SAG T1 DIXON W", "DIXON"), ("ep2d_diff_b1000 ADC", "ADC"),
    ("AX DWI B1000", "DWI"), ("COR STIR", "STIR"), ("SAG PD FS", "PD"), ("PDW_SPAIR_COR", "PD"),
    ("AX T2* GRE", "GRE"), ("SWI_3D", "SWI"), ("t2_tse_sag", "T2"), ("T1_MPRAGE", "T1"),
    ("COR T1FS POST", "T1"), ("DYN VIBE", "DCE"), ("survey", "OTHER"),
])
def test_sequence_type_from_text(description, expected):
    assert series_meta.sequence_type(_ds(SeriesDescription=description)) == expected


@pytest.mark.parametrize("tags, expected", [
    (dict(ScanningSequence="SE", RepetitionTime=500, EchoTime=12), "T1"),
    (dict(ScanningSequence="SE", RepetitionTime=4000, EchoTime=100), "T2"),
    (dict(ScanningSequence="SE", RepetitionTime=3000, EchoTime=25), "PD"),
    (dict(ScanningSequence=["SE", "IR"], RepetitionTime=9000, EchoTime=120, InversionTime=2500), "FLAIR"),
    (dict(ScanningSequence=["SE", "IR"], RepetitionTime=5000, EchoTime=40, InversionTime=160), "STIR"),
    (dict(ScanningSequence="GR", RepetitionTime=600, EchoTime=20), "GRE"),
    (dict(ImageType=["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]), "ADC"),
    (dict(ScanningSequence="GR", RepetitionTime=5, EchoTime=2), "T1"),
])
def test_sequence_type_from_physics(tags, expected):
    assert series_meta.sequence_type(_ds(**tags)) == expected


def test_contrast_t1_with_time_points_is_dce():
    ds = _ds(SeriesDescription="AX T1 FS", ContrastBolusAgent="GADOLINIUM")
    assert series_meta.sequence_type(ds, n_timepoints=1) == "T1"
    assert series_meta.sequence_type(ds, n_timepoints=6) == "DCE"


@pytest.mark.parametrize("iop, expected", [
    (f.AXIAL, "axial"), (f.CORONAL, "coronal"), (f.SAGITTAL, "sagittal"),
    (f.oblique_iop(8.0, 0.0), "axial"),      # 8 deg off axial: still axial
    (f.oblique_iop(20.0, 15.0), "oblique"),  # normal tilted 20 deg
])
def test_orientation(iop, expected):
    assert series_meta.orientation(iop) == expected


def test_orientation_normal_angle_is_independent_of_in_plane_rotation():
    # a pure in-plane rotation keeps the normal on z: axial
    assert series_meta.orientation(f.oblique_iop(0.0, 40.0)) == "axial"


@pytest.mark.parametrize("tags, expected", [
    (dict(BodyPartExamined="KNEE"), "knee"),
    (dict(BodyPartExamined="LSPINE"), "lumbar_spine"),
    (dict(BodyPartExamined="TMJ JOINT"), "tmj_joint"),  # unmapped: kept, same case and form
    (dict(StudyDescription="MRI LEFT SHOULDER WITHOUT AND WITH CONTRAST"), "shoulder"),
    (dict(StudyDescription="MR L-SPINE WO"), "lumbar_spine"),
    (dict(StudyDescription="MRI ABDOMEN"), "abdomen"),
    (dict(StudyDescription="MRI CARDIAC MORPHOLOGY"), "cardiac"),
    (dict(StudyDescription="SOMETHING"), None),
])
def test_body_part(tags, expected):
    assert series_meta.body_part(_ds(**tags)) == expected


@pytest.mark.parametrize("tags, expected", [
    (dict(SeriesDescription="AX T1 POST"), True), (dict(SeriesDescription="T1 +C"), True),
    (dict(SeriesDescription="AX T1 PRE"), False), (dict(SeriesDescription="AX T1", ContrastBolusAgent="Gd"), True),
    (dict(SeriesDescription="AX T1"), False),
])
def test_contrast(tags, expected):
    assert series_meta.is_contrast(_ds(**tags)) is expected


def test_derive_meta_has_every_contract_key():
    ds = f.make_dataset(np.zeros((4, 6), np.uint16), iop=f.SAGITTAL, spacing=(0.5, 0.7),
                        extra={"RepetitionTime": 3000, "EchoTime": 90, "BodyPartExamined": "KNEE"})
    meta = series_meta.derive_meta(ds, n_slices=20, n_timepoints=1, slice_spacing=3.0)
    keys = ("modality sequence_type orientation body_part series_description manufacturer model field_strength "
            "rows cols pixel_spacing_row pixel_spacing_col slice_thickness slice_spacing n_slices n_timepoints "
            "repetition_time echo_time flip_angle transfer_syntax contrast").split()
    assert set(meta) == set(keys)
    assert (meta["rows"], meta["cols"], meta["pixel_spacing_row"], meta["pixel_spacing_col"]) == (4, 6, 0.5, 0.7)
    assert meta["orientation"] == "sagittal" and meta["body_part"] == "knee" and meta["sequence_type"] == "T2"
    assert meta["field_strength"] == 3.0 and meta["model"] is None and meta["flip_angle"] is None


def test_header_body_parts_speak_the_report_rules_vocabulary():
    """exams.body_part (report rule) and series.body_part (headers) compare as equals: for
    every non-facial sample protocol, its headers map to the label its report text gets."""
    from mrifoundry.sample.protocols import PROTOCOLS
    from mrifoundry.tasks.curation.selection.reports import ReportRules, body_part_of, normalise_protocol
    rules = ReportRules.load()
    checked = 0
    for p in PROTOCOLS:
        if p.facial and p.body_part != "BRAIN":  # BodyPartExamined HEAD cannot tell face from brain
            continue
        by_report = body_part_of(normalise_protocol(p.name), rules)
        assert by_report is not None and by_report == by_report.lower()
        assert series_meta.body_part(_ds(BodyPartExamined=p.body_part)) == by_report, p.name
        assert series_meta.body_part(_ds(StudyDescription=p.name)) == by_report, p.name
        checked += 1
    assert checked >= 20
