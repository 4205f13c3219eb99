"""NIfTI: RAS, 1 mm, optional shape, clean header, and world coordinates that match DICOM."""
from __future__ import annotations

import gzip
import time

import nibabel as nib
import numpy as np
import pytest

from mrifoundry.errors import CurationError
from mrifoundry.tasks.curation.continuity.checks import ContinuityConfig, Volume, check_series
from mrifoundry.tasks.curation.convert.nifti import NiftiConfig, volumes_to_nifti
from mrifoundry.tasks.curation.convert.png import volume_to_png
from tests import dicom_factory as f

ROWS, COLS, NZ = 24, 20, 10
SPACING, STEP, ORIGIN = (0.9, 1.1), 2.0, (-10.0, -20.0, 30.0)
MARKERS = [(7, 12, 4), (17, 5, 6)]  # (row, col, slice), away from the edges
PLANES = {"axial": f.AXIAL, "sagittal": f.SAGITTAL, "coronal": f.CORONAL, "oblique": f.oblique_iop()}


def _series(tmp_path, iop, marker, **kwargs):
    vol = np.zeros((NZ, ROWS, COLS), np.uint16)
    r, c, k = marker
    vol[k - 1:k + 2, r - 1:r + 2, c - 1:c + 2] = 1000  # a 3x3x3 block centred on the marker
    files = f.write_series(tmp_path / "dcm", n_slices=NZ, rows=ROWS, cols=COLS, iop=iop, origin=ORIGIN,
                           spacing=SPACING, step=STEP, volume=vol, **kwargs)
    result = check_series("s1", files, ContinuityConfig())
    assert result.status == "ok", result.reason
    return result.volumes


def _centroid_world(img) -> np.ndarray:
    data = np.asarray(img.dataobj, dtype=float)
    idx = np.argwhere(data > 0)
    w = data[data > 0]
    voxel = (idx * w[:, None]).sum(axis=0) / w.sum()
    return (img.affine @ np.r_[voxel, 1.0])[:3]


@pytest.mark.parametrize("plane", list(PLANES))
@pytest.mark.parametrize("marker", MARKERS)
def test_world_coordinates_match_dicom(tmp_path, plane, marker):
    iop = PLANES[plane]
    t0 = time.perf_counter()
    record = volumes_to_nifti(_series(tmp_path, iop, marker), tmp_path / "s1.nii.gz", NiftiConfig())
    elapsed = time.perf_counter() - t0
    img = nib.load(record.path)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S") and record.axcodes == "RAS"
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0), atol=1e-5)
    lps = f.pixel_lps(iop, ORIGIN, SPACING, STEP, *marker)  # DICOM PS3.3 C.7.6.2, by hand
    expected_ras = lps * np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(_centroid_world(img), expected_ras, atol=0.5)
    assert elapsed < 10.0


def test_fixed_shape_and_native_spacing(tmp_path):
    volumes = _series(tmp_path, f.SAGITTAL, MARKERS[0])
    rec = volumes_to_nifti(volumes, tmp_path / "a.nii.gz", NiftiConfig(shape=(32, 30, 16)))
    img = nib.load(rec.path)
    assert img.shape == (32, 30, 16) and rec.shape == (32, 30, 16)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    np.testing.assert_allclose(img.header.get_zooms(), (1.0, 1.0, 1.0), atol=1e-5)
    native = volumes_to_nifti(volumes, tmp_path / "b.nii.gz", NiftiConfig(voxel_size_mm=None))
    # sagittal: slices along x (2 mm), columns along y (1.1 mm), rows along z (0.9 mm)
    np.testing.assert_allclose(native.zooms, (STEP, SPACING[1], SPACING[0]), atol=1e-5)
    assert native.shape == (NZ, COLS, ROWS)


def test_header_is_clean_and_provenance_recorded(tmp_path):
    rec = volumes_to_nifti(_series(tmp_path, f.AXIAL, MARKERS[0]), tmp_path / "s1.nii.gz", NiftiConfig())
    hdr = nib.load(rec.path).header
    assert hdr["descrip"].tobytes().rstrip(b"\x00").decode().startswith("mrifoundry dicom2nifti ")
    for key in ("db_name", "aux_file", "intent_name"):
        assert hdr[key].tobytes().strip(b"\x00") == b""
    assert len(hdr.extensions) == 0
    raw = gzip.decompress(rec.path.read_bytes())
    assert b"T2 TSE AX" not in raw and b"ACME" not in raw  # no header text leaks into the file
    assert rec.converter == "dicom2nifti" and rec.converter_version == "2.6.2"
    assert rec.params["nibabel_version"] == nib.__version__ and rec.params["interpolation_order"] == 1
    assert hdr.get_data_dtype() == np.int16
    assert not list(tmp_path.glob(".*"))


def test_4d_uses_middle_time_point_and_matches_png_count(tmp_path):
    vol = np.zeros((3, 6, 16, 16), np.uint16)
    for t in range(3):
        vol[t, 2:4, 6:9, 6:9] = 100 * (t + 1)  # time point t has intensity 100(t+1)
    files = f.write_series(tmp_path / "d", n_slices=6, n_time=3, time_major=False, volume=vol)
    result = check_series("s1", files, ContinuityConfig())
    assert result.status == "ok" and len(result.volumes) == 3
    rec = volumes_to_nifti(result.volumes, tmp_path / "s1.nii.gz", NiftiConfig(voxel_size_mm=None))
    data = np.asarray(nib.load(rec.path).dataobj)
    assert data.max() == 200 and rec.params["temporal_index"] == 1
    pngs = volume_to_png(result.volumes[1], tmp_path / "png")
    assert len(pngs) == data.shape[2] == rec.params["n_slices"]  # axial: slices along z


def test_dicom2nifti_validation_error_becomes_a_rejection_with_its_code(tmp_path):
    volumes = _series(tmp_path, f.AXIAL, MARKERS[0])
    bad = Volume(0, volumes[0].files[:1] * 3, volumes[0].positions[:1] * 3)  # one position thrice
    with pytest.raises(CurationError) as err:
        volumes_to_nifti([bad], tmp_path / "s1.nii.gz", NiftiConfig())
    assert err.value.status == "rejected" and err.value.reason == "d2n_too_few_slices_localizer"
    assert not (tmp_path / "s1.nii.gz").exists()


def test_other_converter_errors_stay_failures(tmp_path):
    volumes = _series(tmp_path, f.AXIAL, MARKERS[0])
    with pytest.raises(CurationError) as err:   # a file that vanished: an error, retried on re-run
        volumes_to_nifti([Volume(0, [tmp_path / "gone.dcm"] * 6, list(range(6)))], tmp_path / "s2.nii.gz")
    assert err.value.status == "failed" and err.value.reason == "convert_error"


def _ramp() -> np.ndarray:
    """500 + 20·(row + col): in-plane structure (a flat image is screened out as blank)."""
    r, c = np.indices((ROWS, COLS))
    return (500 + 20 * (r + c)).astype(np.uint16)


@pytest.mark.parametrize("step", [2.0, 4.4])
def test_edge_planes_keep_measured_values(tmp_path, step):
    """A stack of identical slices stays identical along z after 1 mm resampling: the
    whole-voxel output box may reach past the last slice centre (4.4 mm → 1 mm), and that
    plane must not fade towards 0."""
    vol = np.broadcast_to(_ramp(), (NZ, ROWS, COLS)).copy()
    files = f.write_series(tmp_path / "dcm", n_slices=NZ, rows=ROWS, cols=COLS, iop=f.AXIAL, origin=ORIGIN,
                           spacing=SPACING, step=step, volume=vol)
    volumes = check_series("s1", files, ContinuityConfig()).volumes
    data = np.asarray(nib.load(volumes_to_nifti(volumes, tmp_path / "u.nii.gz", NiftiConfig()).path).dataobj)
    assert data.shape[2] == int(np.ceil((NZ - 1) * step)) + 1
    assert data.min() >= 500
    for k in (0, data.shape[2] - 1):
        np.testing.assert_array_equal(data[:, :, k], data[:, :, data.shape[2] // 2])


def test_oblique_corners_are_empty_not_smeared(tmp_path):
    """Output voxels more than half a voxel outside the oblique source slab are 0."""
    vol = np.broadcast_to(_ramp(), (NZ, ROWS, COLS)).copy()
    iop = f.oblique_iop()
    files = f.write_series(tmp_path / "dcm", n_slices=NZ, rows=ROWS, cols=COLS, iop=iop, origin=ORIGIN,
                           spacing=SPACING, step=STEP, volume=vol)
    volumes = check_series("s1", files, ContinuityConfig()).volumes
    img = nib.load(volumes_to_nifti(volumes, tmp_path / "o.nii.gz", NiftiConfig()).path)
    data = np.asarray(img.dataobj)
    # independent check: world → DICOM (col, row, slice) index by hand from IOP/IPP/spacing
    row_dir, col_dir = np.array(iop[:3]), np.array(iop[3:])
    basis = np.c_[row_dir * SPACING[1], col_dir * SPACING[0], f.normal_of(iop) * STEP]
    ijk = np.indices(data.shape).reshape(3, -1)
    ras = (img.affine @ np.r_[ijk, np.ones((1, ijk.shape[1]))])[:3]
    src = np.linalg.solve(basis, ras * np.array([[-1.0], [-1.0], [1.0]]) - np.array(ORIGIN)[:, None])
    n = np.array([[COLS], [ROWS], [NZ]])
    inside = np.all((src >= -0.49) & (src <= n - 0.51), axis=0)
    outside = np.any((src < -0.51) | (src > n - 0.49), axis=0)
    flat = data.reshape(-1)
    assert inside.sum() > 1000 and outside.sum() > 1000
    assert np.all(flat[inside] >= 500)
    assert np.all(flat[outside] == 0)
