"""DICOM-SEG reading on pydicom + NumPy: the real liver SEG of pydicom-data, and small SEGs
written here (binary 1-bit packed and fractional, two segments, coronal planes)."""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import pack_bits
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mrifoundry.tasks.ingest.labelled3d.dicom_seg import is_dicom_seg, read_dicom_seg
from mrifoundry.tasks.ingest.labelled3d.readers import SEG_SOP_CLASS
from mrifoundry.tasks.ingest.labels import CaseError

CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)


def _item(**kw) -> Dataset:
    ds = Dataset()
    for k, v in kw.items():
        setattr(ds, k, v)
    return ds


def make_seg(path: Path, frames: list[tuple[int, tuple, np.ndarray]], *, rows: int, cols: int, iop=CORONAL,
             spacing=(1.0, 1.0), labels: dict[int, str] | None = None, fractional: bool = False,
             series_uid: str | None = None, between: float | None = None) -> Path:
    """A SEG file: frames (segment number, ImagePositionPatient, mask rows×cols; fractional: 0..255)."""
    labels = labels or {s: f"seg{s}" for s in sorted({f[0] for f in frames})}
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = SEG_SOP_CLASS
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = SEG_SOP_CLASS, ds.file_meta.MediaStorageSOPInstanceUID, "SEG"
    ds.SeriesInstanceUID, ds.StudyInstanceUID = generate_uid(), generate_uid()
    ds.SegmentationType = "FRACTIONAL" if fractional else "BINARY"
    if fractional:
        ds.SegmentationFractionalType, ds.MaximumFractionalValue = "PROBABILITY", 255
    ds.SegmentSequence = Sequence([_item(SegmentNumber=s, SegmentLabel=n) for s, n in labels.items()])
    ds.SharedFunctionalGroupsSequence = Sequence([_item(
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=list(iop))]),
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=list(spacing), SliceThickness=1.0,
                                              **({"SpacingBetweenSlices": between} if between else {}))]))])
    ds.PerFrameFunctionalGroupsSequence = Sequence([_item(
        PlanePositionSequence=Sequence([_item(ImagePositionPatient=list(ipp))]),
        SegmentIdentificationSequence=Sequence([_item(ReferencedSegmentNumber=s)])) for s, ipp, _ in frames])
    if series_uid:
        ds.ReferencedSeriesSequence = Sequence([_item(SeriesInstanceUID=series_uid)])
    ds.Rows, ds.Columns, ds.NumberOfFrames = rows, cols, len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PixelRepresentation = 1, "MONOCHROME2", 0
    stack = np.stack([m for _, _, m in frames]).astype(np.uint8)
    if fractional:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        ds.PixelData = stack.tobytes()
    else:
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 1, 0
        ds.PixelData = pack_bits(stack > 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def test_real_liver_seg_of_pydicom_data():
    path = get_testdata_file("liver.dcm")
    ds = pydicom.dcmread(path)
    seg = read_dicom_seg(path)
    assert is_dicom_seg(path)
    assert seg.n_frames == int(ds.NumberOfFrames) == 3 and seg.names == {1: "Liver"}
    assert seg.segmentation_type == "BINARY" and seg.frames_per_segment == {1: 3}
    data = np.asarray(seg.image.dataobj)
    assert data.shape == (512, 512, 3) and set(np.unique(data)) == {0, 1}
    assert int((data == 1).sum()) == int(ds.pixel_array.astype(bool).sum())
    assert len(seg.referenced_instances) == 3
    # each frame on its slice: pixel (row r, col c) of frame f at IPP_f + c*dx*row_dir + r*dy*col_dir (LPS)
    ps = [float(v) for v in ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing]
    inv = np.linalg.inv(seg.image.affine)
    for f, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ipp = np.array(item.PlanePositionSequence[0].ImagePositionPatient, float)
        r, c = np.argwhere(ds.pixel_array[f])[len(np.argwhere(ds.pixel_array[f])) // 2]
        lps = ipp + c * ps[1] * np.array([1, 0, 0]) + r * ps[0] * np.array([0, 1, 0])
        vox = np.rint(inv @ np.append(lps * [-1, -1, 1], 1))[:3].astype(int)
        assert data[tuple(vox)] == 1 and vox[2] == f


def test_real_seg_on_a_larger_reference_grid():
    path = get_testdata_file("liver.dcm")
    own = read_dicom_seg(path).image
    shift = own.affine.copy()
    shift[:3, 3] -= shift[:3, 2]  # reference starts one slice lower and has 5 slices
    ref = nib.Nifti1Image(np.zeros((512, 512, 5), np.int16), shift)
    seg = read_dicom_seg(path, reference=ref)
    data = np.asarray(seg.image.dataobj)
    assert data.shape == (512, 512, 5) and data.dtype == np.uint8
    assert not data[..., 0].any() and not data[..., 4].any()
    assert np.array_equal(data[..., 1:4], np.asarray(own.dataobj))


def test_truncated_liver_seg_is_refused():
    # pydicom's liver_1frame.dcm keeps one frame of pixel data but three per-frame groups
    with pytest.raises(CaseError, match="must agree"):
        read_dicom_seg(get_testdata_file("liver_1frame.dcm"))


@pytest.mark.parametrize("fractional", [False, True])
def test_two_segments_coronal_overlap_higher_wins(tmp_path, fractional):
    rows, cols = 6, 8
    a = np.zeros((rows, cols), np.uint8)
    a[1:4, 2:6] = 255 if fractional else 1
    b = np.zeros((rows, cols), np.uint8)
    b[2:5, 4:7] = 200 if fractional else 1
    weak = np.zeros((rows, cols), np.uint8)
    weak[0, 0] = 100  # fractional 100/255 < 0.5: not in the segment
    # coronal planes: normal = row × col = (1,0,0) × (0,0,-1) = (0,1,0); frames at y = 5, 7 (one slice left empty)
    frames = [(1, (0.0, 5.0, 10.0), a), (2, (0.0, 5.0, 10.0), b), (1, (0.0, 9.0, 10.0), np.maximum(a, weak))]
    path = make_seg(tmp_path / "seg.dcm", frames, rows=rows, cols=cols, spacing=(2.0, 0.5), fractional=fractional,
                    labels={1: "liver", 2: "lesion"}, between=2.0)
    seg = read_dicom_seg(path)
    assert seg.names == {1: "liver", 2: "lesion"} and seg.frames_per_segment == {1: 2, 2: 1}
    data, inv = np.asarray(seg.image.dataobj), np.linalg.inv(seg.image.affine)

    def at(r, c, y):  # label at pixel (r, c) of the plane at LPS y, by the DICOM geometry
        lps = np.array([0.0, y, 10.0]) + c * 0.5 * np.array([1, 0, 0]) + r * 2.0 * np.array([0, 0, -1])
        return data[tuple(np.rint(inv @ np.append(lps * [-1, -1, 1], 1))[:3].astype(int))]

    # RAS: x = the columns (8), y = the slices at 5, 7, 9 mm (SpacingBetweenSlices 2), z = the rows (6)
    assert data.shape == (8, 3, 6) and not data[:, 1, :].any()
    assert at(1, 2, 5.0) == 1 and at(2, 5, 5.0) == 2 and at(4, 6, 5.0) == 2 and at(0, 0, 5.0) == 0
    # binary frames hold 0/1 only (the 100 is 1); fractional 100/255 is under the 0.5 threshold
    assert at(1, 2, 9.0) == 1 and at(0, 0, 9.0) == (0 if fractional else 1)
    assert int((data == 2).sum()) == int(b.astype(bool).sum())
    last = (a > 0).sum() + (0 if fractional else 1)
    assert int((data > 0).sum()) == int((a > 0).sum() + (b > 0).sum() - ((a > 0) & (b > 0)).sum() + last)


def test_irregular_positions_and_non_seg_are_refused(tmp_path):
    m = np.ones((2, 2), np.uint8)
    path = make_seg(tmp_path / "bad.dcm", [(1, (0, 0, 0), m), (1, (0, 2, 0), m), (1, (0, 5, 0), m)], rows=2, cols=2)
    with pytest.raises(CaseError, match="regular slice grid"):
        read_dicom_seg(path)
    shifted = make_seg(tmp_path / "shift.dcm", [(1, (0, 0, 0), m), (1, (3, 2, 0), m)], rows=2, cols=2)
    with pytest.raises(CaseError, match="in-plane origins"):
        read_dicom_seg(shifted)
    mr = get_testdata_file("MR_small.dcm")
    assert not is_dicom_seg(mr)
    with pytest.raises(CaseError, match="not a DICOM Segmentation"):
        read_dicom_seg(mr)
