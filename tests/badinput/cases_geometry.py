"""Corpus cases about geometry: oblique and tilted stacks, missing, degenerate or
non-finite position/orientation/spacing, inconsistent matrices, zero slice spacing."""
from __future__ import annotations

import math

from pydicom.dataelem import DataElement

from tests.badinput.expect import CaseExpect
from tests.badinput.expect_helpers import ok, registry, rejected
from tests.badinput.writers import Study
from tests.dicom_factory import CORONAL, oblique_iop

CASES, case = registry()


@case("a double-oblique stack (20° about x, 15° about z)")
def oblique(st: Study) -> CaseExpect:
    s, _ = st.series("a", iop=oblique_iop(20.0, 15.0))
    return CaseExpect([ok(s, orientation="oblique")])


@case("a coronal stack with anisotropic pixels (0.5 x 0.9 mm)")
def coronal_anisotropic(st: Study) -> CaseExpect:
    s, _ = st.series("a", iop=CORONAL, spacing=(0.5, 0.9), description="COR PD FS")
    return CaseExpect([ok(s, orientation="coronal", sequence_type="PD")])


@case("gantry tilt: axial images whose positions shear 20° off the slice normal")
def gantry_tilt(st: Study) -> CaseExpect:
    def tilt(ds, k):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + 3.0 * k * math.tan(math.radians(20.0)), z]
    s, _ = st.series("a", mutate=tilt)
    return CaseExpect([rejected(s, "gantry_tilt")])


@case("Rows/Columns differ within the series (32x32 and 32x48)")
def inconsistent_rows_cols(st: Study) -> CaseExpect:
    s, _ = st.series("a", n=6)
    st.series("a", n=6, cols=48, start=6, positions=[18.0 + 3.0 * k for k in range(6)])
    return CaseExpect([rejected(s, "inconsistent_geometry")])


def _drop(keyword: str, only: int | None = None):
    def mutate(ds, k):
        if only is None or k == only:
            delattr(ds, keyword)
    return mutate


@case("ImagePositionPatient missing on one image")
def missing_ipp(st: Study) -> CaseExpect:
    s, _ = st.series("a", mutate=_drop("ImagePositionPatient", only=4))
    return CaseExpect([rejected(s, "missing_geometry")])


@case("ImageOrientationPatient missing on every image")
def missing_iop(st: Study) -> CaseExpect:
    s, _ = st.series("a", mutate=_drop("ImageOrientationPatient"))
    return CaseExpect([rejected(s, "missing_geometry")])


@case("PixelSpacing missing on every image")
def missing_pixel_spacing(st: Study) -> CaseExpect:
    s, _ = st.series("a", mutate=_drop("PixelSpacing"))
    return CaseExpect([rejected(s, "missing_geometry")])


@case("PixelSpacing 0\\0")
def zero_pixel_spacing(st: Study) -> CaseExpect:
    def zero(ds, k):
        ds.PixelSpacing = [0.0, 0.0]
    s, _ = st.series("a", mutate=zero)
    return CaseExpect([rejected(s, "missing_geometry")])


@case("ImageOrientationPatient all zeros (no direction)")
def degenerate_orientation(st: Study) -> CaseExpect:
    def zero(ds, k):
        ds.ImageOrientationPatient = [0.0] * 6
    s, _ = st.series("a", mutate=zero)
    return CaseExpect([rejected(s, "missing_geometry")])


@case("zero slice spacing: every image at the same position, SpacingBetweenSlices 0")
def zero_slice_spacing(st: Study) -> CaseExpect:
    s, _ = st.series("a", positions=[0.0] * 12, extra={"SpacingBetweenSlices": 0.0})
    return CaseExpect([rejected(s, "duplicate_position")])


def _raw_ds(keyword_tag: int, text: str) -> DataElement:
    return DataElement(keyword_tag, "DS", text)


@case("NaN / inf in non-geometric float attributes (TR, TE, flip, field strength, thickness)")
def nan_inf_attributes(st: Study) -> CaseExpect:
    def nan(ds, k):
        ds[0x00180080] = _raw_ds(0x00180080, "NaN")        # RepetitionTime
        ds[0x00180081] = _raw_ds(0x00180081, "inf")        # EchoTime
        ds[0x00181314] = _raw_ds(0x00181314, "-inf")       # FlipAngle
        ds[0x00180087] = _raw_ds(0x00180087, "nan")        # MagneticFieldStrength
        ds[0x00180050] = _raw_ds(0x00180050, "NaN")        # SliceThickness
    s, _ = st.series("a", mutate=nan)
    return CaseExpect([ok(s)])


@case("NaN in ImagePositionPatient of one image")
def nan_in_position(st: Study) -> CaseExpect:
    def nan(ds, k):
        if k == 3:
            ds[0x00200032] = DataElement(0x00200032, "DS", ["-12", "NaN", "29"])
    s, _ = st.series("a", mutate=nan)
    return CaseExpect([rejected(s, "missing_geometry")])
