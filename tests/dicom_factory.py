"""Synthetic MR series for tests, written with pydicom.

Geometry follows DICOM PS3.3 C.7.6.2: ``ImageOrientationPatient`` = (row direction,
column direction) — the row direction is where the *column index* grows — and the
LPS position of pixel (r, c) of slice k is

    IPP_k + c * PixelSpacing[1] * row_dir + r * PixelSpacing[0] * col_dir,
    IPP_k = origin + k * step * (row_dir × col_dir).

Tests derive expected positions from :func:`pixel_lps` (plain NumPy), not from the
code under test.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
SAGITTAL = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)


def oblique_iop(deg_x: float = 20.0, deg_z: float = 15.0) -> tuple[float, ...]:
    """An axial orientation rotated ``deg_x`` about x then ``deg_z`` about z (well away from any axis)."""
    ax, az = np.deg2rad(deg_x), np.deg2rad(deg_z)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    rot = rz @ rx
    return tuple(float(v) for v in np.concatenate([rot @ [1, 0, 0], rot @ [0, 1, 0]]))


def normal_of(iop) -> np.ndarray:
    iop = np.asarray(iop, dtype=float)
    return np.cross(iop[:3], iop[3:])


def pixel_lps(iop, origin, spacing, step, r: float, c: float, k: float) -> np.ndarray:
    """LPS position (mm) of pixel (row r, column c) of slice k of a factory series."""
    iop = np.asarray(iop, dtype=float)
    return (np.asarray(origin, float) + k * step * normal_of(iop)
            + c * spacing[1] * iop[:3] + r * spacing[0] * iop[3:])


def make_dataset(pixels: np.ndarray, *, iop=AXIAL, ipp=(0.0, 0.0, 0.0), spacing=(1.0, 1.0),
                 instance_number: int = 1, series_uid: str | None = None, study_uid: str | None = None,
                 modality: str = "MR", image_type=("ORIGINAL", "PRIMARY", "M", "ND"),
                 series_description: str = "T2 TSE AX", extra: dict | None = None) -> Dataset:
    """One MR image instance (uint16 or int16 grayscale, uncompressed)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.FrameOfReferenceUID = "1.2.3.4"
    ds.Modality = modality
    ds.ImageType = list(image_type)
    ds.SeriesDescription = series_description
    ds.Manufacturer = "ACME"
    ds.MagneticFieldStrength = 3.0
    ds.InstanceNumber = instance_number
    ds.ImageOrientationPatient = [round(float(v), 8) for v in iop]
    ds.ImagePositionPatient = [round(float(v), 6) for v in ipp]
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = 1.0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if pixels.dtype == np.int16 else 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    return ds


def default_pixels(rows: int, cols: int, k: int, t: int = 0) -> np.ndarray:
    """A non-constant deterministic image (differs per slice and time point)."""
    rr, cc = np.mgrid[0:rows, 0:cols]
    return ((rr * 7 + cc * 3 + k * 11 + t * 13) % 200 + 10).astype(np.uint16)


def write_series(out_dir: Path, *, n_slices: int = 8, rows: int = 16, cols: int = 16, iop=AXIAL,
                 origin=(-10.0, -20.0, 30.0), spacing=(1.0, 1.0), step: float = 2.0,
                 positions: list[float] | None = None, n_time: int = 1, time_major: bool = True,
                 temporal_tags: str | None = None, volume: np.ndarray | None = None,
                 transfer_syntax: str | None = None, modality: str = "MR",
                 image_type=("ORIGINAL", "PRIMARY", "M", "ND"), series_description: str = "T2 TSE AX",
                 extra: dict | None = None) -> list[Path]:
    """Write a (3D or 4D) MR series, one file per image, and return the paths.

    Args:
        positions: slice offsets along the normal in mm (default ``k * step``), to plant gaps.
        n_time, time_major: 4D layout; InstanceNumber runs time-major (all slices of t0,
            then t1 …) or slice-major (all time points of slice 0, then slice 1 …).
        temporal_tags: ``"tpi"`` (TemporalPositionIdentifier), ``"acqtime"``
            (AcquisitionTime per time point) or None (positions repeat, nothing else).
        volume: optional pixels, shape (n_time, n_slices, rows, cols) or (n_slices, rows, cols).
        transfer_syntax: compress with ``Dataset.compress`` (e.g. ``pydicom.uid.RLELossless``).

    Returns:
        File paths in InstanceNumber order.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    offsets = list(positions) if positions is not None else [k * step for k in range(n_slices)]
    n_slices = len(offsets)
    if volume is not None and volume.ndim == 3:
        volume = volume[None]
    normal = normal_of(iop)
    series_uid, study_uid = generate_uid(), generate_uid()
    order = ([(t, k) for t in range(n_time) for k in range(n_slices)] if time_major
             else [(t, k) for k in range(n_slices) for t in range(n_time)])
    paths = []
    for i, (t, k) in enumerate(order):
        pixels = volume[t, k] if volume is not None else default_pixels(rows, cols, k, t)
        tags = dict(extra or {})
        if temporal_tags == "tpi":
            tags["TemporalPositionIdentifier"] = t + 1
            tags["NumberOfTemporalPositions"] = n_time
        elif temporal_tags == "acqtime":
            tags["AcquisitionTime"] = (datetime.datetime(2020, 1, 1, 10, 0, 0)
                                       + datetime.timedelta(seconds=30 * t)).strftime("%H%M%S.%f")
        ds = make_dataset(pixels, iop=iop, ipp=np.asarray(origin, float) + offsets[k] * normal,
                          spacing=spacing, instance_number=i + 1, series_uid=series_uid,
                          study_uid=study_uid, modality=modality, image_type=image_type,
                          series_description=series_description, extra=tags)
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        path = out_dir / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def read(path: Path) -> Dataset:
    return pydicom.dcmread(path)
