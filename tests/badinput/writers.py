"""Low-level writers for the bad-input corpus: one study folder, its series and odd files.

Everything is deterministic (UIDs from the case name), small (32×32 by default) and
written with pydicom, except the deliberately broken bytes (cut files, JPEG, text).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from tests.dicom_factory import AXIAL, make_dataset, normal_of

Mutator = Callable[[Dataset, int], Dataset | None]
Writer = Callable[[Dataset, Path], None]


def uid(*parts: str) -> str:
    """A deterministic UID (the corpus is rebuilt identically every time)."""
    return generate_uid(entropy_srcs=[str(p) for p in parts])


def pixels(rows: int, cols: int, k: int, t: int = 0, dtype=np.uint16) -> np.ndarray:
    """Non-constant, slice-dependent test pattern."""
    rr, cc = np.mgrid[0:rows, 0:cols]
    return ((rr * 5 + cc * 3 + k * 17 + t * 29) % 300 + 20).astype(dtype)


def save(ds: Dataset, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


class Study:
    """One study folder of the corpus: a patient, an accession number, its series."""

    def __init__(self, folder: Path, name: str, index: int):
        self.folder, self.name = folder, name
        self.study_uid = uid(name, "study")
        self.accession = f"BAD{index:04d}"
        self.patient_id = f"PBAD{index:04d}"
        self.folder.mkdir(parents=True, exist_ok=True)

    def header(self, ds: Dataset) -> Dataset:
        ds.PatientID, ds.PatientName = self.patient_id, f"Badinput^Case{self.accession}"
        ds.AccessionNumber, ds.StudyInstanceUID = self.accession, self.study_uid
        ds.StudyDate, ds.StudyTime, ds.StudyDescription = "20180312", "101500", "MRI RIGHT KNEE WITHOUT CONTRAST"
        ds.BodyPartExamined = "KNEE"
        return ds

    def series(self, tag: str, *, n: int = 12, rows: int = 32, cols: int = 32, iop=AXIAL, step: float = 3.0,
               spacing=(0.8, 0.8), sub: str = "", number: int = 1, description: str = "T2 TSE AX",
               image_type=("ORIGINAL", "PRIMARY", "M", "ND"), dtype=np.uint16, positions=None,
               mutate: Mutator | None = None, writer: Writer = save, extra: dict | None = None,
               start: int = 0) -> tuple[str, list[Path]]:
        """Write ``n`` single-frame MR images; ``mutate(ds, k)`` may edit (or replace) each one.

        Returns:
            (SeriesInstanceUID, file paths).
        """
        series_uid = uid(self.name, "series", tag)
        offsets = list(positions) if positions is not None else [k * step for k in range(n)]
        normal = normal_of(iop)
        paths = []
        for k, off in enumerate(offsets):
            ds = make_dataset(pixels(rows, cols, k, dtype=dtype), iop=iop,
                              ipp=np.array([-12.0, -15.0, 20.0]) + off * normal, spacing=spacing,
                              instance_number=start + k + 1, series_uid=series_uid, study_uid=self.study_uid,
                              image_type=image_type, series_description=description, extra=extra)
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid(self.name, tag, "sop", start + k)
            ds.SeriesNumber = number
            ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = 3000.0, 90.0, 90.0
            self.header(ds)
            if mutate is not None:
                ds = mutate(ds, k) or ds
            path = self.folder / sub / f"IM{tag}_{start + k:04d}.dcm"
            path.parent.mkdir(parents=True, exist_ok=True)
            writer(ds, path)
            paths.append(path)
        return series_uid, paths

    def write_bytes(self, name: str, data: bytes) -> Path:
        path = self.folder / name
        path.write_bytes(data)
        return path


# --------------------------------------------------------------------------- encodings
def write_big_endian(ds: Dataset, path: Path) -> None:
    """Explicit VR Big Endian: 16-bit OW pixel words byte-swapped, the rest encoded by pydicom."""
    arr = np.frombuffer(ds.PixelData, dtype="<u2")
    ds.PixelData = arr.astype(">u2").tobytes()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    ds.save_as(path, enforce_file_format=True, implicit_vr=False, little_endian=False)


def write_deflated(ds: Dataset, path: Path) -> None:
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)


def write_implicit_no_meta(ds: Dataset, path: Path) -> None:
    """Implicit VR Little Endian, no 128-byte preamble, no 'DICM', no file meta (old archives)."""
    del ds.file_meta
    buf = io.BytesIO()
    pydicom.filewriter.dcmwrite(buf, ds, implicit_vr=True, little_endian=True, enforce_file_format=False)
    path.write_bytes(buf.getvalue())


def jpeg_bytes() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels(32, 32, 0).astype(np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def dicomdir_dataset() -> Dataset:
    """A minimal DICOMDIR (Media Storage Directory) with an empty record sequence."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.MediaStorageDirectoryStorage
    ds.file_meta.MediaStorageSOPInstanceUID = uid("dicomdir")
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "BADINPUT"
    ds.OffsetOfTheFirstDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.OffsetOfTheLastDirectoryRecordOfTheRootDirectoryEntity = 0
    ds.FileSetConsistencyFlag = 0
    ds.DirectoryRecordSequence = []
    return ds
