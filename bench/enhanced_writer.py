"""Write classic single-frame MR images as one Enhanced MR Image Storage object (test data).

Vendors (Philips, Canon, Siemens XA) export one acquisition both ways; :func:`write_enhanced`
makes the enhanced copy of a classic series: the frames in the given file order, per-frame
position, acquisition date-time, temporal position, echo, diffusion and ASL values in the
functional groups (shared when equal on every frame), native little-endian pixels.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import EnhancedMRImageStorage, ExplicitVRLittleEndian, generate_uid

__all__ = ["write_enhanced"]

# functional-group macro -> [(classic keyword, keyword in the macro)]
_MACROS = {
    "PixelMeasuresSequence": [("PixelSpacing", "PixelSpacing"), ("SliceThickness", "SliceThickness"),
                              ("SpacingBetweenSlices", "SpacingBetweenSlices")],
    "PlaneOrientationSequence": [("ImageOrientationPatient", "ImageOrientationPatient")],
    "PlanePositionSequence": [("ImagePositionPatient", "ImagePositionPatient")],
    "MRImageFrameTypeSequence": [("ImageType", "FrameType"), ("ComplexImageComponent", "ComplexImageComponent"),
                                 ("AcquisitionContrast", "AcquisitionContrast")],
    "MRTimingAndRelatedParametersSequence": [("RepetitionTime", "RepetitionTime"), ("FlipAngle", "FlipAngle"),
                                             ("EchoTrainLength", "EchoTrainLength")],
    "MREchoSequence": [("EchoTime", "EffectiveEchoTime")],
    "MRDiffusionSequence": [("DiffusionBValue", "DiffusionBValue"), ("DiffusionDirectionality", "DiffusionDirectionality"),
                            ("DiffusionGradientDirectionSequence", "DiffusionGradientDirectionSequence")],
    "MRArterialSpinLabelingSequence": [("ASLContext", "ASLContext")],
    "PixelValueTransformationSequence": [("RescaleIntercept", "RescaleIntercept"), ("RescaleSlope", "RescaleSlope"),
                                         ("RescaleType", "RescaleType")],
    "FrameVOILUTSequence": [("WindowCenter", "WindowCenter"), ("WindowWidth", "WindowWidth")],
}
_ALWAYS_PER_FRAME = {"PlanePositionSequence", "FrameContentSequence"}
# classic attributes that become frame content or have no place at the top of the object
_PER_IMAGE = {k for pairs in _MACROS.values() for k, _ in pairs} | {
    "SOPInstanceUID", "InstanceNumber", "AcquisitionDate", "AcquisitionTime", "AcquisitionDateTime",
    "TemporalPositionIdentifier", "ContentTime", "SliceLocation", "EchoNumbers", "PixelData"}


def _frame_datetime(ds: Dataset) -> str | None:
    """AcquisitionDate + AcquisitionTime (the date from Content/Series/StudyDate when absent)."""
    time = str(ds.get("AcquisitionTime", "") or "").strip().replace(":", "")
    if not time:
        return None
    date = next((str(ds.get(k) or "").strip() for k in ("AcquisitionDate", "ContentDate", "SeriesDate", "StudyDate")
                 if str(ds.get(k) or "").strip()), "")
    return date + time if len(date) == 8 else None


def _macro_item(ds: Dataset, pairs: list[tuple[str, str]]) -> Dataset | None:
    item = Dataset()
    for classic, keyword in pairs:
        if classic in ds and ds[classic].value not in (None, ""):
            setattr(item, keyword, ds[classic].value)
    return item if len(item) else None


def _frame_content(ds: Dataset, k: int) -> Dataset:
    item = Dataset()
    when = _frame_datetime(ds)
    if when:
        item.FrameAcquisitionDateTime = when
    tpi = ds.get("TemporalPositionIdentifier")
    if tpi not in (None, ""):
        item.TemporalPositionIndex = int(tpi)
    item.InStackPositionNumber = k + 1
    return item


def write_enhanced(classic_files: list[Path], out_path: Path, series_uid: str | None = None) -> Path:
    """Write the classic images ``classic_files`` (one series, equal Rows/Columns/bits) as the
    frames of one Enhanced MR object at ``out_path``.

    Args:
        classic_files: single-frame MR images, in the frame order wanted.
        out_path: the file to write (its folder is created).
        series_uid: the object's SeriesInstanceUID (default: the classic series' own).

    Returns:
        ``out_path``.
    """
    images = [pydicom.dcmread(p) for p in classic_files]
    if not images:
        raise ValueError("no classic images to combine")
    first = images[0]
    ds = Dataset()
    for elem in first:
        if elem.keyword not in _PER_IMAGE and not elem.tag.is_private:
            ds.add(elem)
    uid = generate_uid()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid
    ds.SeriesInstanceUID = series_uid or str(first.SeriesInstanceUID)
    ds.InstanceNumber = 1
    ds.ImageType = list(first.get("ImageType") or ["ORIGINAL", "PRIMARY"])[:4]
    ds.NumberOfFrames = len(images)
    times = [t for t in map(_frame_datetime, images) if t]
    if times:
        ds.AcquisitionDateTime = min(times)
    shared, per_frame = Dataset(), [Dataset() for _ in images]
    for macro, pairs in _MACROS.items():
        items = [_macro_item(img, pairs) for img in images]
        if all(i is None for i in items):
            continue
        if macro not in _ALWAYS_PER_FRAME and all(i == items[0] for i in items):
            setattr(shared, macro, Sequence([items[0]]))
            continue
        for frame, item in zip(per_frame, items):
            setattr(frame, macro, Sequence([item if item is not None else Dataset()]))
    for k, (frame, img) in enumerate(zip(per_frame, images)):
        frame.FrameContentSequence = Sequence([_frame_content(img, k)])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    ds.PerFrameFunctionalGroupsSequence = Sequence(per_frame)
    pixels = np.stack([np.asarray(img.pixel_array) for img in images])
    ds.PixelData = np.ascontiguousarray(pixels.astype(pixels.dtype.newbyteorder("<"), copy=False)).tobytes()
    ds["PixelData"].VR = "OW" if int(first.get("BitsAllocated", 16)) > 8 else "OB"
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(out_path, enforce_file_format=True)
    return out_path
