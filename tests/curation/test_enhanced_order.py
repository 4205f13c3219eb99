"""Enhanced multi-frame volumes are numbered in acquisition order, as a classic export (and
dcm2niix) numbers them, not in sorted key order (issue 20, part 5)."""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mrifoundry.tasks.curation.deid.frames import split_images

N_SLICES, ROWS = 4, 8
# acquisition order: b=1000 along x, then b=0, then b=1000 along y (sorted keys would put b=0 first)
VOLUMES = [(1000.0, (1.0, 0.0, 0.0)), (0.0, None), (1000.0, (0.0, 1.0, 0.0))]


def _item(**kw) -> Dataset:
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def _enhanced_dti(slice_major: bool, with_times: bool = True) -> Dataset:
    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedMRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    ds.SeriesInstanceUID, ds.Modality, ds.ImageType = pydicom.uid.generate_uid(), "MR", ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", ROWS, ROWS
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    order = ([(k, v) for k in range(N_SLICES) for v in range(len(VOLUMES))] if slice_major
             else [(k, v) for v in range(len(VOLUMES)) for k in range(N_SLICES)])
    ds.NumberOfFrames = len(order)
    ds.SharedFunctionalGroupsSequence = Sequence([_item(
        PixelMeasuresSequence=Sequence([_item(PixelSpacing=[1.0, 1.0], SliceThickness=2.0)]),
        PlaneOrientationSequence=Sequence([_item(ImageOrientationPatient=[1, 0, 0, 0, 1, 0])]))])
    frames = []
    for k, v in order:
        b, g = VOLUMES[v]
        diff = _item(DiffusionBValue=b, DiffusionDirectionality="DIRECTIONAL" if g else "NONE")
        if g:
            diff.DiffusionGradientDirectionSequence = Sequence([_item(DiffusionGradientOrientation=list(g))])
        content = _item(InStackPositionNumber=k + 1)
        if with_times:
            content.FrameAcquisitionDateTime = f"20200101100{v}00.000000"
        frames.append(_item(PlanePositionSequence=Sequence([_item(ImagePositionPatient=[0.0, 0.0, 2.0 * k])]),
                            FrameContentSequence=Sequence([content]), MRDiffusionSequence=Sequence([diff])))
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack([np.full((ROWS, ROWS), 100 * v + k, np.uint16) for k, v in order]).tobytes()
    return ds


def _volume_of(img: Dataset) -> int:
    return int(img.pixel_array[0, 0]) // 100   # the pixels say which acquired volume a frame is


def test_volumes_numbered_in_acquisition_order():
    for slice_major in (True, False):
        for with_times in (True, False):
            images = split_images(_enhanced_dti(slice_major, with_times))
            numbering = {_volume_of(i): int(i.TemporalPositionIdentifier) for i in images}
            # stored volume-major without times, or with times either way: acquisition order
            assert numbering == {0: 1, 1: 2, 2: 3}, (slice_major, with_times, numbering)
