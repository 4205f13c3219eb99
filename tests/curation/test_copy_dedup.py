"""A classic series and its Enhanced MR copy (Philips, Canon, Siemens XA export both) curate to
one series: in one SeriesInstanceUID the frames collapse onto the classic images
(``duplicate_removed``), under two UIDs the later series is ``duplicate_series``."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from mrifoundry.catalog.views import connect
from bench import vendor_check
from bench.enhanced_writer import write_enhanced
from mrifoundry.tasks.curation.continuity.pixels import remove_duplicate_copies
from mrifoundry.tasks.curation.deid.frames import split_images
from tests.dicom_factory import default_pixels, make_dataset, write_series

N_SLICES = 8


def _ids(**kw) -> dict:
    return {"StudyInstanceUID": generate_uid(), "SeriesInstanceUID": generate_uid(), "PatientID": "P1",
            "AcquisitionDate": "20200101", "AcquisitionTime": "100000.000000", **kw}


def _timed_by_volume(files: list[Path]) -> None:
    """One AcquisitionTime per time point (TemporalPositionIdentifier), as a scanner writes them."""
    for path in files:
        ds = pydicom.dcmread(path)
        ds.AcquisitionTime = f"1000{int(ds.TemporalPositionIdentifier) * 10:02d}.000000"
        ds.save_as(path)


def _catalog(out: Path, sql: str) -> list[tuple]:
    con = connect(out / "research")
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_enhanced_writer_round_trips_through_the_frame_split(tmp_path):
    """The builder itself: split back into classic images, the frames carry the classic geometry,
    times, volume numbers and pixels."""
    files = write_series(tmp_path / "c", n_slices=4, n_time=3, temporal_tags="tpi", extra=_ids())
    _timed_by_volume(files)
    ds = pydicom.dcmread(write_enhanced(files, tmp_path / "e.dcm"))
    assert ds.SOPClassUID == pydicom.uid.EnhancedMRImageStorage and int(ds.NumberOfFrames) == 12
    frames = split_images(ds)
    for path, frame in zip(files, frames):
        classic = pydicom.dcmread(path)
        assert [float(v) for v in frame.ImagePositionPatient] == [float(v) for v in classic.ImagePositionPatient]
        assert frame.AcquisitionTime == classic.AcquisitionTime
        assert int(frame.TemporalPositionIdentifier) == int(classic.TemporalPositionIdentifier)
        assert np.array_equal(frame.pixel_array, classic.pixel_array)


def test_same_uid_3d_classic_and_enhanced_are_one_volume(tmp_path):
    ids = _ids()
    files = write_series(tmp_path / "a" / "classic", n_slices=N_SLICES, extra=ids)
    write_enhanced(files, tmp_path / "a" / "enhanced" / "e.dcm")
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out")
    assert [(s.status, s.reason) for s in res.series] == [("ok", None)]
    assert res.dropped.get("duplicate_removed") == N_SLICES
    rows = _catalog(tmp_path / "out", "SELECT n_slices, n_timepoints FROM series")
    assert rows == [(N_SLICES, 1)]
    n_removed = _catalog(tmp_path / "out", "SELECT count(*) FROM stage_results WHERE stage = 'continuity' "
                                           "AND item_kind = 'instance' AND reason = 'duplicate_removed'")
    assert n_removed == [(N_SLICES,)]


def test_same_uid_4d_keeps_three_time_points(tmp_path):
    ids = _ids()
    files = write_series(tmp_path / "a" / "classic", n_slices=N_SLICES, n_time=3, temporal_tags="tpi", extra=ids)
    _timed_by_volume(files)
    write_enhanced(files, tmp_path / "a" / "enhanced" / "e.dcm")
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out")
    assert [(s.status, s.reason) for s in res.series] == [("ok", None)]
    assert res.dropped.get("duplicate_removed") == 3 * N_SLICES
    assert _catalog(tmp_path / "out", "SELECT n_slices, n_timepoints FROM series") == [(N_SLICES, 3)]


def test_different_uids_keep_one_series_and_reject_the_copy(tmp_path):
    ids = _ids()
    files = write_series(tmp_path / "a" / "classic", n_slices=N_SLICES, extra=ids)
    write_enhanced(files, tmp_path / "a" / "enhanced" / "e.dcm", series_uid=generate_uid())
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out")
    assert sorted((s.status, s.reason) for s in res.series) == [("ok", None), ("rejected", "duplicate_series")]
    kept = next(s for s in res.series if s.status == "ok")
    copy = next(s for s in res.series if s.status == "rejected")
    research = tmp_path / "out" / "research"
    assert kept.nifti and (research / kept.nifti).is_file()
    assert copy.nifti is None
    assert not list(research.glob(f"nifti/*/{copy.series_id}*"))       # NIfTI and sidecars gone
    assert not list(research.glob(f"png/*/{copy.series_id}"))
    assert list(research.glob(f"png/*/{kept.series_id}/*.png"))
    msg = _catalog(tmp_path / "out", f"SELECT message FROM stage_results WHERE item_id = '{copy.series_id}' "
                                     "AND stage = 'convert'")
    assert msg == [(f"same voxels as series {kept.series_id}",)]
    n_ok = _catalog(tmp_path / "out", "SELECT n_series, n_series_ok, n_slices FROM exams")
    assert n_ok == [(2, 1, N_SLICES)]


def test_different_series_in_one_exam_both_stay(tmp_path):
    """Negative control: series of one exam with other pixels, or the same (synthetic) pixels
    under another protocol, are not copies."""
    study = generate_uid()
    write_series(tmp_path / "a" / "one", n_slices=N_SLICES, extra=_ids(StudyInstanceUID=study))
    other = np.stack([default_pixels(16, 16, k) + 50 for k in range(N_SLICES)]).astype(np.uint16)
    write_series(tmp_path / "a" / "two", n_slices=N_SLICES, volume=other, extra=_ids(StudyInstanceUID=study))
    write_series(tmp_path / "a" / "three", n_slices=N_SLICES, series_description="T1 SE AX",
                 extra=_ids(StudyInstanceUID=study))
    res = vendor_check.curate_case(tmp_path / "a", tmp_path / "out")
    assert [(s.status, s.reason) for s in res.series] == [("ok", None)] * 3
    assert "duplicate_removed" not in res.dropped


# --------------------------------------------------------------------------- the continuity step alone
@dataclass
class _Img:
    path: Path
    ds: Dataset


def _images(tmp_path: Path, pixels: list[np.ndarray], z: list[float] | None = None, **extra) -> list[_Img]:
    """Images (at one position unless ``z`` says), each with its own SOPInstanceUID."""
    out = []
    tmp_path.mkdir(parents=True, exist_ok=True)
    for n, arr in enumerate(pixels):
        ds = make_dataset(arr, instance_number=n + 1, ipp=(0.0, 0.0, z[n] if z else 0.0),
                          extra={"AcquisitionTime": "100000", **extra})
        path = tmp_path / f"{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(_Img(path, pydicom.dcmread(path, stop_before_pixels=True)))
    return out


def test_same_image_under_two_uids_collapses_to_the_first(tmp_path):
    imgs = _images(tmp_path, [default_pixels(8, 8, 0)] * 3)
    removed: list = []
    kept = remove_duplicate_copies(imgs, removed)
    assert [i.path for i in kept] == [imgs[0].path]
    assert removed == [(imgs[1].path, "duplicate_removed"), (imgs[2].path, "duplicate_removed")]


def test_same_key_other_pixels_or_unreadable_key_stay(tmp_path):
    imgs = _images(tmp_path / "a", [default_pixels(8, 8, 0), default_pixels(8, 8, 1)])
    removed: list = []
    assert remove_duplicate_copies(imgs, removed) == imgs and removed == []
    imgs = _images(tmp_path / "b", [default_pixels(8, 8, 0)] * 2, AcquisitionTime="garbage")
    assert remove_duplicate_copies(imgs, removed) == imgs and removed == []
    imgs = _images(tmp_path / "c", [default_pixels(8, 8, 0)] * 2)
    imgs[0].ds.TemporalPositionIdentifier = 1
    imgs[1].ds.TemporalPositionIdentifier = 2     # another time point with equal pixels: not a copy
    assert remove_duplicate_copies(imgs, removed) == imgs and removed == []


def test_constant_images_collapse_only_beside_a_real_copy(tmp_path):
    """Zero slices repeat in every time point of a 4D series without temporal tags: alone they are
    no evidence of a copy; beside a copied non-constant image they are copies too."""
    zeros, image = np.zeros((8, 8), np.uint16), default_pixels(8, 8, 0)
    imgs = _images(tmp_path / "a", [zeros, zeros])
    removed: list = []
    assert remove_duplicate_copies(imgs, removed) == imgs and removed == []
    imgs = _images(tmp_path / "b", [zeros, image, zeros, image], z=[0.0, 2.0, 0.0, 2.0])
    kept = remove_duplicate_copies(imgs, removed)
    assert [i.path for i in kept] == [imgs[0].path, imgs[1].path]
    assert sorted(removed) == sorted([(imgs[2].path, "duplicate_removed"), (imgs[3].path, "duplicate_removed")])
