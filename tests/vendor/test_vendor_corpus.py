"""Real vendor DICOM shipped by packages (nibabel, pydicom, pydicom-data, heudiconv): curated
with default settings, compared with dcm2niix in world space (bench/vendor_check.py)."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest

from bench import vendor_check
from bench.vendor_corpus import build, source_root


def _case(tmp_path, name):
    built, missing = build(tmp_path / "archives", [name])
    if name in missing:
        pytest.skip(f"source of {name} not installed")
    return built[name]


# volumes against dcm2niix: tests/vendor/test_differential.py


@pytest.mark.parametrize("name, reason", [
    ("siemens-mosaic-dwi-gz", "blank_series"),            # nibabel stripped the pixels: all zero
    ("philips-enhanced-mprage-gz", "blank_series"),
    ("siemens-mosaic-dti", "mosaic_grid_mismatch"),       # 256² mosaic, 7×7 grid: resized test file
    ("enhanced-no-geometry", "multiframe_no_geometry"),   # 10 frames, no functional groups
    ("siemens-xa-enhanced-mpr", "derived_series"),
    ("siemens-mosaic-bold-header-only", "too_few_slices"),
])
def test_true_rejections(tmp_path, name, reason):
    res = vendor_check.curate_case(_case(tmp_path, name), tmp_path / "out")
    assert res.audit_ok
    assert [s.reason for s in res.series] == [reason]


def test_partial_and_duplicate_copies_get_their_own_reasons(tmp_path):
    """MR_small in 8 encodings + a truncated copy: one image is kept, 7 equal copies and the
    truncated one are dropped with their reasons; the series' own verdict is about the image."""
    res = vendor_check.curate_case(_case(tmp_path, "canon-classic-small"), tmp_path / "out")
    assert res.dropped == {"duplicate_removed": 7, "truncated_file": 1}
    assert [s.reason for s in res.series] == ["derived_series"]   # ImageType DERIVED\SECONDARY


def test_mosaic_split_matches_nibabel_geometry():
    """Slice positions of a real mosaic against nibabel's MosaicWrapper (an independent reader)."""
    from nibabel.nicom.dicomwrappers import wrapper_from_data

    from mrifoundry.tasks.curation.deid.frames import split_images
    root = source_root("heudiconv")
    if root is None:
        pytest.skip("heudiconv data not installed")
    ds = pydicom.dcmread(root / "axasc35.dcm")
    images = split_images(ds)
    w = wrapper_from_data(ds)
    assert len(images) == w.n_mosaic == 35
    data = w.get_unscaled_data()   # (rows, cols, slices)
    for k in (0, 17, 34):
        expected = np.asarray(w.image_position) + k * float(ds.SpacingBetweenSlices) * np.asarray(w.slice_normal)
        assert np.allclose([float(v) for v in images[k].ImagePositionPatient], expected, atol=1e-3)
        assert np.array_equal(images[k].pixel_array, data[:, :, k])
    assert "MOSAIC" not in images[0].ImageType
    assert len({im.SOPInstanceUID for im in images}) == 35


def test_enhanced_split_reads_per_frame_groups(tmp_path):
    from mrifoundry.tasks.curation.deid.frames import split_images
    built = _case(tmp_path, "philips-enhanced-mprage-gz-filled")
    import gzip
    path = next(built.rglob("*.gz"))
    ds = pydicom.dcmread(pydicom.filebase.DicomBytesIO(gzip.decompress(path.read_bytes())))
    frames = split_images(ds)
    assert len(frames) == int(ds.NumberOfFrames)
    for k in (0, 88, 175):
        pf = ds.PerFrameFunctionalGroupsSequence[k]
        assert [float(v) for v in frames[k].ImagePositionPatient] == \
            [float(v) for v in pf.PlanePositionSequence[0].ImagePositionPatient]
        assert np.array_equal(frames[k].pixel_array, ds.pixel_array[k])
        assert str(frames[k].SOPClassUID) == pydicom.uid.MRImageStorage


def test_real_headers_typed():
    """Sequence types on real headers: Siemens DTI and resting-state BOLD mosaics."""
    from mrifoundry.tasks.curation.continuity.series_meta import sequence_type
    nib_root = source_root("nibabel")
    assert sequence_type(pydicom.dcmread(nib_root / "tests/data/0.dcm", stop_before_pixels=True)) == "DTI"
    assert sequence_type(pydicom.dcmread(nib_root / "nicom/tests/data/csa_slice_norm.dcm",
                                         stop_before_pixels=True)) == "BOLD"
    root = source_root("heudiconv")
    if root is not None:   # no description rule matches "ax_asc_35sl": EPI physics (TE ≈ 30 ms) says BOLD
        assert sequence_type(pydicom.dcmread(root / "axasc35.dcm", stop_before_pixels=True)) == "BOLD"


def test_vendor_table_renders(tmp_path):
    res = vendor_check.curate_case(_case(tmp_path, "siemens-xa-enhanced-mpr"), tmp_path / "out")
    table = vendor_check.markdown([res], ["some-case"])
    assert "siemens-xa-enhanced-mpr" in table and "derived_series" in table and "some-case" in table
