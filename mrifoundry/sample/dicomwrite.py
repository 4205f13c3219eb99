"""DICOM headers full of PHI, as a hospital scanner writes them, and fast per-slice writing.

One template Dataset per series; each slice only changes its UID, position, number and
pixels (building datasets is the slow part of the generator).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DSequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MRImageStorage

from mrifoundry.sample.protocols import SEQUENCES

BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
PRIVATE_CREATOR = "RVMC RIS 1.0"


def hhmmss_plus(hhmmss: str, seconds: int) -> str:
    t = int(hhmmss[:2]) * 3600 + int(hhmmss[2:4]) * 60 + int(hhmmss[4:6]) + seconds
    t %= 86400
    return f"{t // 3600:02d}{t % 3600 // 60:02d}{t % 60:02d}"


def study_header(exam: dict) -> Dataset:
    """Patient, study and equipment modules shared by every object of the exam (PHI on purpose)."""
    p, sc = exam["patient"], exam["scanner"]
    date = exam["report_date"].replace("-", "")
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = "^".join(p["name"])
    ds.PatientID = p["mrn"]
    ds.IssuerOfPatientID = "RVMC"
    ds.OtherPatientIDs = p["other_id"]
    ds.PatientBirthDate = p["birth_date"].replace("-", "")
    ds.PatientSex = p["sex"]
    ds.PatientAge = f"{int(date[:4]) - int(p['birth_date'][:4]):03d}Y"
    ds.PatientSize = p["height_m"]
    ds.PatientWeight = p["weight_kg"]
    ds.PatientAddress = p["address"]
    ds.PatientTelephoneNumbers = p["phone"]
    ds.StudyInstanceUID = exam["study_uid"]
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = date
    ds.StudyTime = exam["study_time"]
    ds.AccessionNumber = exam["accession"]
    ds.StudyID = exam["study_id"]
    ds.StudyDescription = exam["protocol"].name
    ds.ReferringPhysicianName = exam["referring"]
    ds.NameOfPhysiciansReadingStudy = exam["reading"]
    ds.PerformingPhysicianName = exam["performing"]
    ds.OperatorsName = exam["operator"]
    ds.InstitutionName, ds.InstitutionAddress = sc["institution"]
    ds.InstitutionalDepartmentName = "RADIOLOGY MRI"
    ds.StationName = sc["station"]
    ds.Manufacturer = sc["manufacturer"]
    ds.ManufacturerModelName = sc["model"]
    ds.DeviceSerialNumber = sc["serial"]
    ds.SoftwareVersions = sc["software"]
    req = Dataset()
    req.AccessionNumber = exam["accession"]
    req.RequestedProcedureID = exam["accession"]
    req.RequestedProcedureDescription = exam["protocol"].name
    req.ScheduledProcedureStepID = f"SPS{exam['accession']}"
    ds.RequestAttributesSequence = DSequence([req])
    block = ds.private_block(0x0033, PRIVATE_CREATOR, create=True)
    block.add_new(0x10, "LO", str(ds.PatientName))
    block.add_new(0x11, "LO", p["mrn"])
    block.add_new(0x12, "LO", exam["accession"])
    return ds


def series_template(exam: dict, spec: dict, study: Dataset) -> Dataset:
    """Series-level template of an image series (MR, or CT for the non-MR defect)."""
    ds = copy.deepcopy(study)
    sc = exam["scanner"]
    ts = spec.get("transfer_syntax") or (ImplicitVRLittleEndian if exam["implicit_vr"] else ExplicitVRLittleEndian)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.SeriesInstanceUID = spec["uid"]
    ds.SeriesNumber = spec["number"]
    ds.SeriesDescription = spec["description"]
    ds.ProtocolName = spec["description"]
    ds.SeriesTime = hhmmss_plus(exam["study_time"], 300 * spec["index"])
    ds.FrameOfReferenceUID = exam["for_uid"]
    ds.PositionReferenceIndicator = ""
    ds.BodyPartExamined = exam["protocol"].body_part
    ds.PatientPosition = "FFS" if exam["protocol"].body_part in ("KNEE", "ANKLE", "FOOT") else "HFS"
    ds.SliceThickness = spec["thickness"]
    ds.SpacingBetweenSlices = round(spec["thickness"] + spec["gap"], 4)
    px = round(spec["fov"] / spec["cols"], 6)
    ds.PixelSpacing = [px, px]
    ds.Rows, ds.Columns = spec["rows"], spec["cols"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    if spec["modality"] == "CT":
        ds.SOPClassUID = CTImageStorage
        ds.Modality = "CT"
        ds.KVP = 120
        ds.ConvolutionKernel = "B30f"
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = -1024, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        return ds
    seq = SEQUENCES[spec["seq_key"]]
    ds.SOPClassUID = MRImageStorage
    ds.Modality = "MR"
    ds.MagneticFieldStrength = sc["field"]
    ds.ImagingFrequency = round(42.577478 * sc["field"], 6)
    ds.ImagedNucleus = "1H"
    ds.MRAcquisitionType = "2D"
    ds.ScanningSequence = seq.scanning_sequence.split("\\")
    ds.SequenceVariant = seq.sequence_variant.split("\\")
    ds.ScanOptions = seq.scan_options or ""
    ds.SequenceName = f"*{spec['seq_key'].lower()}2d1"
    ds.RepetitionTime, ds.EchoTime, ds.FlipAngle = seq.tr, seq.te, seq.flip
    if seq.ti:
        ds.InversionTime = seq.ti
    ds.EchoTrainLength = seq.etl
    ds.NumberOfAverages = 1
    ds.PercentSampling = 100
    ds.PercentPhaseFieldOfView = round(100.0 * spec["rows"] / spec["cols"], 4)
    ds.PixelBandwidth = 200
    ds.AcquisitionMatrix = [0, spec["cols"], spec["rows"], 0]
    ds.InPlanePhaseEncodingDirection = "COL"
    ds.ReceiveCoilName = f"{exam['protocol'].body_part[:8]}_COIL"
    ds.TransmitCoilName = "Body"
    if seq.b_value is not None:
        ds.add_new(0x00189087, "FD", seq.b_value)   # DiffusionBValue
    if spec["post_contrast"]:
        ds.ContrastBolusAgent = "GADOBUTROL"
        ds.ContrastBolusRoute = "IV"
    if spec["n_timepoints"] > 1:
        ds.NumberOfTemporalPositions = spec["n_timepoints"]
    ds.WindowCenter, ds.WindowWidth = 800, 1600
    return ds


# Per-slice elements (tag → VR); everything else is shared by the series' files.
DYNAMIC = {0x00080008: "CS", 0x00080018: "UI", 0x00080032: "TM", 0x00080033: "TM", 0x00200013: "IS",
           0x00200032: "DS", 0x00200037: "DS", 0x00200100: "IS", 0x00201041: "DS", 0x7FE00010: "OW"}


def slice_values(*, image_type, sop_uid: str, instance: int, ipp, iop, pixels: np.ndarray, slice_location: float,
                 temporal: int | None, acq_time: str | None) -> dict[int, object]:
    """Values of the DYNAMIC elements of one slice (None = element absent)."""
    return {0x00080008: list(image_type), 0x00080018: sop_uid, 0x00080032: acq_time, 0x00080033: acq_time,
            0x00200013: instance, 0x00200032: [round(float(v), 4) for v in ipp], 0x00200037: list(iop),
            0x00200100: temporal, 0x00201041: round(float(slice_location), 4), 0x7FE00010: pixels.tobytes()}


def write_image(ds: Dataset, path: Path, values: dict[int, object]) -> None:
    """Slow path (pydicom save_as; compressed transfer syntaxes): set the slice's values and write."""
    for tag, value in values.items():
        if tag in ds:
            del ds[tag]
        if value is not None and tag != 0x7FE00010:
            ds.add_new(tag, DYNAMIC[tag], value)
    ds.file_meta.MediaStorageSOPInstanceUID = values[0x00080018]
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ts = ds.file_meta.TransferSyntaxUID
    pixels = np.frombuffer(values[0x7FE00010], dtype=np.uint16).reshape(ds.Rows, ds.Columns)
    if ts.is_compressed:
        ds.compress(ts, pixels, generate_instance_uid=False)
    else:
        ds.add_new(0x7FE00010, "OW", values[0x7FE00010])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_text_sr(exam: dict, spec: dict, study: Dataset, path: Path, sop_uid: str) -> None:
    """A Basic Text SR (technologist notes, with PHI) in the study: an object without pixels."""
    ds = copy.deepcopy(study)
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = BASIC_TEXT_SR
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = BASIC_TEXT_SR, sop_uid
    ds.Modality = "SR"
    ds.SeriesInstanceUID, ds.SeriesNumber = spec["uid"], spec["number"]
    ds.SeriesDescription = spec["description"]
    ds.InstanceNumber = 1
    ds.ContentTime = exam["study_time"]
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
    ds.ConceptNameCodeSequence = DSequence([_code("18748-4", "LN", "Diagnostic Imaging Report")])
    item = Dataset()
    item.RelationshipType, item.ValueType = "CONTAINS", "TEXT"
    item.ConceptNameCodeSequence = DSequence([_code("121106", "DCM", "Comment")])
    item.TextValue = (f"Patient {ds.PatientName} (MRN {exam['patient']['mrn']}) tolerated the exam well. "
                      f"Tech: {exam['operator']}.")
    ds.ContentSequence = DSequence([item])
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    c = Dataset()
    c.CodeValue, c.CodingSchemeDesignator, c.CodeMeaning = value, scheme, meaning
    return c
