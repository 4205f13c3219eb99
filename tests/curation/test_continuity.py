"""Continuity checks: each planted defect gets its own reason; clean and 4D series pass."""
from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

from mrifoundry.catalog.reasons import REASONS
from mrifoundry.errors import CurationError
from mrifoundry.tasks.curation.continuity.checks import ContinuityConfig, check_series
from tests import dicom_factory as f

CFG = ContinuityConfig()


def _reason(files, cfg=CFG):
    result = check_series("s0000000000000001", files, cfg)
    assert result.status == ("ok" if result.reason is None else "rejected")
    assert result.reason is None or REASONS[result.reason][0] == "continuity"
    return result.reason


@pytest.mark.parametrize("iop, plane", [(f.AXIAL, "axial"), (f.SAGITTAL, "sagittal"),
                                        (f.CORONAL, "coronal"), (f.oblique_iop(), "oblique")])
def test_clean_series_pass_sorted_along_normal(tmp_path, iop, plane):
    origin, step = np.array([-10.0, -20.0, 30.0]), 2.5
    # write with descending positions: the check must re-sort them ascending along the normal
    files = f.write_series(tmp_path, n_slices=7, iop=iop, origin=origin, step=-step)
    result = check_series("s1", files, CFG)
    assert (result.status, result.reason, result.removed) == ("ok", None, [])
    (vol,) = result.volumes
    assert vol.files == files[::-1]
    n = f.normal_of(iop)
    expected = [float(np.dot(origin, n)) - step * k for k in range(6, -1, -1)]
    np.testing.assert_allclose(vol.positions, expected, atol=1e-4)
    assert result.meta["orientation"] == plane
    assert result.meta["n_slices"] == 7 and result.meta["n_timepoints"] == 1
    assert result.meta["slice_spacing"] == pytest.approx(step, abs=1e-3)


@pytest.mark.parametrize("time_major, tags", [(True, None), (False, None), (False, "acqtime"),
                                              (False, "tpi"), (True, "tpi")])
def test_4d_split_into_time_points(tmp_path, time_major, tags):
    n_time, n_slices = 3, 6
    files = f.write_series(tmp_path, n_slices=n_slices, n_time=n_time, time_major=time_major, temporal_tags=tags)
    result = check_series("s1", files, CFG)
    assert result.status == "ok", result.reason
    assert [v.temporal_index for v in result.volumes] == [0, 1, 2]
    for t, vol in enumerate(result.volumes):
        # the factory numbers file i as (t, k) in the chosen layout: invert that independently
        expected = ([files[t * n_slices + k] for k in range(n_slices)] if time_major
                    else [files[k * n_time + t] for k in range(n_slices)])
        assert vol.files == expected
    assert result.meta["n_timepoints"] == 3 and result.meta["n_slices"] == 6


@pytest.mark.parametrize("syntax, size", [(JPEG2000Lossless, 32), (JPEGLSLossless, 16), (RLELossless, 16)])
def test_compressed_syntaxes_decode(tmp_path, syntax, size):
    files = f.write_series(tmp_path, n_slices=5, rows=size, cols=size, transfer_syntax=syntax)
    assert pydicom.dcmread(files[0]).file_meta.TransferSyntaxUID == syntax
    result = check_series("s1", files, CFG)
    assert result.status == "ok", result.reason
    assert result.meta["transfer_syntax"] == syntax
    np.testing.assert_array_equal(pydicom.dcmread(files[2]).pixel_array, f.default_pixels(size, size, 2))


def test_defects_each_get_their_own_reason(tmp_path):
    cases = {
        "non_mr_modality": dict(modality="CT"),
        "too_few_slices": dict(n_slices=2),
        "missing_slice": dict(positions=[0, 2, 4, 8, 10, 12]),
        "non_uniform_spacing": dict(positions=[0, 2, 4, 7, 9, 11]),
        "duplicate_position": dict(positions=[0, 2, 4, 4, 6, 8, 10]),
        "localizer_series": dict(image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")),
        "derived_series": dict(image_type=("DERIVED", "SECONDARY", "MPR")),
        "blank_series": dict(volume=np.full((6, 16, 16), 7, np.uint16)),
    }
    for reason, kwargs in cases.items():
        kwargs.setdefault("n_slices", 6)
        assert _reason(f.write_series(tmp_path / reason, **kwargs)) == reason, reason


def test_missing_slice_of_two_steps_but_short_series_is_too_few(tmp_path):
    assert _reason(f.write_series(tmp_path, positions=[0, 4])) == "too_few_slices"


def test_incomplete_4d(tmp_path):
    files = f.write_series(tmp_path, n_slices=6, n_time=3, temporal_tags="tpi")
    files[-1].unlink()  # last slice of the last time point
    assert _reason(files[:-1]) == "incomplete_4d"


def test_mixed_orientation(tmp_path):
    a = f.write_series(tmp_path / "a", n_slices=6)
    b = f.write_series(tmp_path / "b", n_slices=6, iop=f.oblique_iop(5.0, 0.0))
    assert _reason(a + b) == "mixed_orientation"


def test_inconsistent_geometry(tmp_path):
    a = f.write_series(tmp_path / "a", n_slices=3)
    b = f.write_series(tmp_path / "b", n_slices=3, rows=20, positions=[6, 8, 10])
    assert _reason(a + b) == "inconsistent_geometry"
    c = f.write_series(tmp_path / "c", n_slices=3, spacing=(0.8, 0.8), positions=[6, 8, 10])
    assert _reason(a + c) == "inconsistent_geometry"


def test_localizer_and_derived_instances_removed(tmp_path):
    files = f.write_series(tmp_path / "v", n_slices=6)
    loc_type = f.write_series(tmp_path / "l", n_slices=1, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    loc_orth = f.write_series(tmp_path / "o", n_slices=2, iop=f.SAGITTAL)  # orthogonal, no flag
    derived = f.write_series(tmp_path / "d", n_slices=1, image_type=("DERIVED", "SECONDARY"), positions=[1.0])
    result = check_series("s1", files + loc_type + loc_orth + derived, CFG)
    assert result.status == "ok", result.reason
    assert result.volumes[0].files == files
    assert sorted(result.removed) == sorted([(loc_type[0], "localizer_removed"), (loc_orth[0], "localizer_removed"),
                                             (loc_orth[1], "localizer_removed"), (derived[0], "derived_removed")])


def test_three_plane_localizer_without_flag(tmp_path):
    files = [p for i, iop in enumerate((f.AXIAL, f.SAGITTAL, f.CORONAL))
             for p in f.write_series(tmp_path / str(i), n_slices=3, iop=iop)]
    assert _reason(files) == "localizer_series"


def test_diffusion_maps_kept_unless_configured(tmp_path):
    files = f.write_series(tmp_path, n_slices=6, image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC"),
                           series_description="ADC")
    result = check_series("s1", files, CFG)
    assert result.status == "ok" and result.meta["sequence_type"] == "ADC"
    assert _reason(files, ContinuityConfig(keep_diffusion_maps=False)) == "derived_series"


def test_truncated_uncompressed_file(tmp_path):
    files = f.write_series(tmp_path, n_slices=6)
    ds = pydicom.dcmread(files[3])
    ds.PixelData = ds.PixelData[:-64]  # the element is consistent, the image is short
    ds.save_as(files[3])
    assert _reason(files) == "truncated_file"
    cut = f.write_series(tmp_path / "cut", n_slices=6)
    cut[2].write_bytes(cut[2].read_bytes()[:-100])  # the file itself ends early
    assert _reason(cut) == "truncated_file"


@pytest.mark.parametrize("syntax, size", [(JPEG2000Lossless, 32), (JPEGLSLossless, 16)])
def test_truncated_and_corrupt_compressed_streams(tmp_path, syntax, size):
    files = f.write_series(tmp_path, n_slices=6, rows=size, cols=size, transfer_syntax=syntax)
    ds = pydicom.dcmread(files[3])
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds.save_as(files[3])
    assert _reason(files) == "truncated_file"
    # a stream that ends properly but is garbage inside cannot be decoded
    ds.PixelData = encapsulate([frame[:2] + b"\x01" * 40 + b"\xff\xd9"])
    ds.save_as(files[3])
    assert _reason(files) == "undecodable_pixels"


def test_unsupported_syntax_is_undecodable(tmp_path):
    files = f.write_series(tmp_path, n_slices=6, transfer_syntax=RLELossless)
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder installed
    ds.save_as(files[0])
    assert _reason(files) == "undecodable_pixels"


def test_unreadable_header_is_a_failure_not_a_rejection(tmp_path):
    files = f.write_series(tmp_path, n_slices=6)
    files[0].write_bytes(b"not dicom")
    with pytest.raises(CurationError) as err:
        check_series("s1", files, CFG)
    assert err.value.reason == "continuity_error" and err.value.item_id == "s1"
