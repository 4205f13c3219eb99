"""Vendor acquisition values read before de-identification (tasks/curation/deid/acquisition.py)
and written beside the NIfTI (tasks/curation/convert/sidecar.py). The end-to-end comparison with
dcm2niix is tests/vendor/test_differential.py; these pin the single readings by hand."""
from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

from mrifoundry.tasks.curation.convert.sidecar import bvec_in_image, pe_code
from mrifoundry.tasks.curation.deid import acquisition

AXIAL = [1, 0, 0, 0, 1, 0]


def _ds(manufacturer: str, **kw) -> Dataset:
    ds = Dataset()
    ds.Manufacturer = manufacturer
    ds.ImageOrientationPatient = AXIAL
    ds.InPlanePhaseEncodingDirection = "COL"
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


@pytest.mark.parametrize("reorder, expected", [("LINEAR", -1), ("REVERSE_LINEAR", 1)])
def test_ge_polarity_from_rectilinear_reordering(reorder, expected):
    ds = _ds("GE MEDICAL SYSTEMS")
    ds.add_new((0x0018, 0x9034), "CS", reorder)
    assert acquisition.describe(ds)["pe_sign"] == expected
    # the same value from another vendor says nothing about polarity
    other = _ds("Philips Medical Systems")
    other.add_new((0x0018, 0x9034), "CS", reorder)
    assert acquisition.describe(other)["pe_sign"] is None


def test_ge_reversed_pepolar_inverts_polarity_and_is_detected_per_volume():
    def image(mode: int, tpi: int) -> Dataset:
        ds = _ds("GE MEDICAL SYSTEMS", TemporalPositionIdentifier=tpi)
        ds.add_new((0x0018, 0x9034), "CS", "LINEAR")
        ds.add_new((0x0019, 0x0010), "LO", "GEMS_ACQU_01")
        ds.add_new((0x0019, 0x109C), "LO", "epi_pepolar")
        ds.add_new((0x0019, 0x10B3), "DS", str(mode))
        return ds
    assert [acquisition.ge_pepolar_reversed(image(2, t)) for t in (1, 2, 3, 4)] == [True, False, True, False]
    assert [acquisition.ge_pepolar_reversed(image(3, t)) for t in (1, 2, 3, 4)] == [False, True, False, True]
    assert acquisition.ge_pepolar_reversed(image(1, 2)) and acquisition.ge_pepolar_alternating(image(2, 1))
    assert not acquisition.ge_pepolar_alternating(image(1, 1))
    assert acquisition.describe(image(1, 1))["pe_sign"] == 1      # LINEAR (-1), reversed


def test_siemens_xa_polarity_and_multiband_from_the_pat_text():
    ds = _ds("SIEMENS")
    ds.add_new((0x0021, 0x0010), "LO", "SIEMENS MR SDS 01")
    ds.add_new((0x0021, 0x111C), "IS", "0")
    ds.add_new((0x0051, 0x0010), "LO", "SIEMENS MR HEADER")
    ds.add_new((0x0051, 0x1011), "LO", "p2s4")
    d = acquisition.describe(ds)
    assert d["pe_sign"] == -1 and d["multiband_factor"] == 4 and d["pe_axis"] == "COL"


def test_ge_b_value_loses_its_flag_offset_and_standardize_writes_public_values():
    ds = _ds("GE MEDICAL SYSTEMS")
    ds.add_new((0x0043, 0x0010), "LO", "GEMS_PARM_01")
    ds.add_new((0x0043, 0x1039), "IS", [1_000_001_000, 8, 0, 0])
    ds.add_new((0x0019, 0x0010), "LO", "GEMS_ACQU_01")
    for i, v in enumerate((0.0, 0.0, 1.0)):
        ds.add_new((0x0019, 0x10BB + i), "DS", str(v))
    acquisition.standardize(ds)
    assert ds.DiffusionBValue == 1000.0 and ds.DiffusionDirectionality == "DIRECTIONAL"
    # axial: GE's logical slice axis is z; dcm2niix's reading gives the slice normal with its sign kept
    g = np.array(ds.DiffusionGradientDirectionSequence[0].DiffusionGradientOrientation)
    assert np.allclose(np.abs(g), [0, 0, 1])


def test_philips_label_becomes_asl_context_and_trace_is_isotropic():
    ds = _ds("Philips Medical Systems")
    ds.add_new((0x2005, 0x0014), "LO", "Philips MR Imaging DD 005")
    ds.add_new((0x2005, 0x1429), "CS", "CONTROL")
    ds.add_new((0x2001, 0x0010), "LO", "Philips Imaging DD 001")
    ds.add_new((0x2001, 0x1003), "FL", 1000.0)
    acquisition.standardize(ds, isotropic=True)
    assert ds.ASLContext == "CONTROL" and ds.DiffusionDirectionality == "ISOTROPIC" and ds.DiffusionBValue == 1000.0


def test_pe_code_and_bvec_in_the_written_frame():
    ras = np.eye(4)
    las = np.diag([-1.0, 1.0, 1.0, 1.0])
    # LPS +y is posterior: in a RAS image that is -j; LPS +x is left: +i of a LAS image
    assert pe_code(ras, np.array([0.0, 1.0, 0.0])) == "j-"
    assert pe_code(las, np.array([1.0, 0.0, 0.0])) == "i"
    assert pe_code(ras, np.array([0.0, 1.0, 0.0]), signed=False) == "j"
    # FSL: a positive-determinant image has its x component negated. LPS (1,0,0) = RAS (-1,0,0)
    assert bvec_in_image(np.diag([2.0, 2.0, 2.0, 1.0]), [1.0, 0.0, 0.0]) == [1.0, 0.0, 0.0]   # 2 mm voxels: same
    assert bvec_in_image(las, [1.0, 0.0, 0.0]) == [1.0, 0.0, 0.0]   # det < 0: as is, +i is left
    assert bvec_in_image(ras, None) == [0.0, 0.0, 0.0]
