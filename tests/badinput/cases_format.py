"""Corpus cases about pixel data and file encoding: bit depths, signedness, float and colour
pixels, multi-frame objects, transfer syntaxes, cut and duplicated instances."""
from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from tests.badinput.expect import CaseExpect
from tests.badinput.expect_helpers import ok, registry, rejected
from tests.badinput.writers import (Study, pixels, save, uid, write_big_endian, write_deflated,
                                    write_implicit_no_meta)
from tests.dicom_factory import AXIAL

CASES, case = registry()


@case("MR images without PixelData (header only)")
def missing_pixel_data(st: Study) -> CaseExpect:
    def strip(ds, k):
        del ds.PixelData
    s, _ = st.series("a", mutate=strip)
    return CaseExpect([rejected(s, "truncated_file")])


@case("BitsAllocated 12 with 16-bit data")
def bits_allocated_12(st: Study) -> CaseExpect:
    def bits(ds, k):
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 12, 12, 11
    s, _ = st.series("a", mutate=bits)
    return CaseExpect([rejected(s, "unsupported_pixel_format")])


@case("BitsAllocated 32 declared, 16-bit data stored (half the bytes)")
def bits_allocated_32(st: Study) -> CaseExpect:
    def bits(ds, k):
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 32, 32, 31
    s, _ = st.series("a", mutate=bits)
    return CaseExpect([rejected(s, "truncated_file")])


@case("BitsStored 20 > BitsAllocated 16")
def bits_stored_gt_allocated(st: Study) -> CaseExpect:
    def bits(ds, k):
        ds.BitsStored, ds.HighBit = 20, 19
    s, _ = st.series("a", mutate=bits)
    return CaseExpect([rejected(s, "unsupported_pixel_format")])


@case("signed pixels (PixelRepresentation 1) with negative values")
def signed_negative_pixels(st: Study) -> CaseExpect:
    def signed(ds, k):
        arr = pixels(32, 32, k).astype(np.int16) - 200
        ds.PixelRepresentation, ds.PixelData = 1, arr.tobytes()
    s, _ = st.series("a", mutate=signed)
    return CaseExpect([ok(s, min_value=-180.0)])


@case("float pixel data: FloatPixelData (7FE0,0008) in an MR image")
def float_pixel_data(st: Study) -> CaseExpect:
    def floats(ds, k):
        del ds.PixelData
        for kw in ("BitsStored", "HighBit", "PixelRepresentation"):
            delattr(ds, kw)
        ds.BitsAllocated = 32
        ds.FloatPixelData = (pixels(32, 32, k).astype(np.float32) / 7.0).tobytes()
    s, _ = st.series("a", mutate=floats)
    return CaseExpect([rejected(s, "unsupported_pixel_format")])


@case("enhanced multi-frame MR: one file, 12 frames, per-frame functional groups")
def enhanced_multiframe(st: Study) -> CaseExpect:
    s = uid(st.name, "series", "mf")

    def item(**kw) -> Dataset:
        d = Dataset()
        for key, value in kw.items():
            setattr(d, key, value)
        return d

    ds = Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = pydicom.uid.EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = uid(st.name, "mf-sop")
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.SeriesInstanceUID, ds.Modality, ds.InstanceNumber, ds.SeriesNumber = s, "MR", 1, 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.SeriesDescription, ds.FrameOfReferenceUID = "T2 3D AX", "1.2.3.4"
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.Rows, ds.Columns = 1, "MONOCHROME2", 32, 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.NumberOfFrames = 12
    ds.SharedFunctionalGroupsSequence = Sequence([item(
        PixelMeasuresSequence=Sequence([item(PixelSpacing=[0.8, 0.8], SliceThickness=3.0)]),
        PlaneOrientationSequence=Sequence([item(ImageOrientationPatient=list(AXIAL))]))])
    ds.PerFrameFunctionalGroupsSequence = Sequence([item(
        PlanePositionSequence=Sequence([item(ImagePositionPatient=[-12.0, -15.0, 20.0 + 3.0 * k])]),
        FrameContentSequence=Sequence([item(InStackPositionNumber=k + 1, StackID="1")])) for k in range(12)])
    ds.PixelData = np.stack([pixels(32, 32, k) for k in range(12)]).tobytes()
    save(st.header(ds), st.folder / "ENHANCED.dcm")
    return CaseExpect([ok(s)])   # split into its 12 frames at deid (tasks/curation/deid/frames.py)


@case("an RGB colour MR image series (SamplesPerPixel 3)")
def color_rgb(st: Study) -> CaseExpect:
    def rgb(ds, k):
        arr = np.repeat(pixels(32, 32, k).astype(np.uint8)[..., None], 3, axis=2)
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = arr.tobytes()
    s, _ = st.series("a", mutate=rgb)
    return CaseExpect([rejected(s, "color_image")])


@case("RescaleSlope 2.5 / RescaleIntercept -100 present")
def rescale_slope_intercept(st: Study) -> CaseExpect:
    s, _ = st.series("a", extra={"RescaleSlope": 2.5, "RescaleIntercept": -100.0, "RescaleType": "US"})
    return CaseExpect([ok(s, min_value=20 * 2.5 - 100.0)])


@case("Explicit VR Big Endian transfer syntax (retired, still in old archives)")
def big_endian(st: Study) -> CaseExpect:
    s, _ = st.series("a", writer=write_big_endian)
    return CaseExpect([ok(s, min_value=20.0)])


@case("Deflated Explicit VR Little Endian transfer syntax")
def deflated(st: Study) -> CaseExpect:
    s, _ = st.series("a", writer=write_deflated)
    return CaseExpect([ok(s, min_value=20.0)])


@case("implicit VR little endian without preamble or file meta (raw dataset files)")
def implicit_no_meta(st: Study) -> CaseExpect:
    s, _ = st.series("a", writer=write_implicit_no_meta)
    return CaseExpect([ok(s, min_value=20.0)])


@case("a file cut inside its pixel data")
def truncated_pixels(st: Study) -> CaseExpect:
    s, paths = st.series("a")
    paths[5].write_bytes(paths[5].read_bytes()[:-700])
    return CaseExpect([rejected(s, "truncated_file")])


@case("two instances share one SOPInstanceUID with different pixels")
def duplicate_sop_uid(st: Study) -> CaseExpect:
    def dup(ds, k):
        if k == 11:
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(st.name, "a", "sop", 4)
    s, _ = st.series("a", mutate=dup)
    return CaseExpect([rejected(s, "duplicate_instance")])


@case("a CT series filed in the MR archive")
def non_mr_modality(st: Study) -> CaseExpect:
    def ct(ds, k):
        ds.Modality = "CT"
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.CTImageStorage
    s, _ = st.series("a", mutate=ct)
    return CaseExpect([rejected(s, "non_mr_modality")])
