"""De-identification stage: DICOM PS3.15 Annex E, table-driven (see docs/deid.md).

Basic Application Level Confidentiality Profile + Clean Descriptors + Retain Longitudinal
Temporal Information with Modified Dates (+ optionally Retain Patient Characteristics).
The per-attribute actions come from Table E.1-1 (:mod:`tasks.curation.deid.profile`); this module
applies them recursively, keeps the pseudonym map (restricted zone only) and writes the
de-identified files. Nothing here logs or raises with a header value.
"""
from __future__ import annotations

import datetime as dt
import logging
import shutil
import tempfile
import traceback
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian

from mrifoundry import ids
from mrifoundry.atomic import replace_dir
from mrifoundry.errors import is_disk_full, where
from mrifoundry.tasks.curation import exam_reads
from mrifoundry.tasks.curation.archive.files import looks_like_dicom
from mrifoundry.tasks.curation.dicom_values import drop_undecodable
from mrifoundry.tasks.curation.deid import acquisition, frames
from mrifoundry.tasks.curation.deid.pseudonyms import PseudonymStore
from mrifoundry.tasks.curation.deid.profile import (
    DEFAULT_OPTIONS, ActionContext, build_action_map, clean_dataset, clean_text, phi_terms_of,
    remap_uid, shift_date,
)

__all__ = [
    "DeidConfig", "DeidRejection", "DeidResult", "DeidSeries", "PseudonymStore",
    "clean_text", "deidentify_dataset", "deidentify_exam", "remap_uid", "shift_date",
]
log = logging.getLogger(__name__)

# Secondary Capture and its multi-frame variants: pixels are screenshots, often with burned-in text.
SECONDARY_CAPTURE_CLASSES = frozenset("1.2.840.10008.5.1.4.1.1.7" + s for s in ("", ".1", ".2", ".3", ".4"))
_DEID_CODES = {
    "113100": "Basic Application Confidentiality Profile",
    "113105": "Clean Descriptors Option",
    "113107": "Retain Longitudinal Temporal Information Modified Dates Option",
    "113108": "Retain Patient Characteristics Option",
    "113111": "Retain Safe Private Option",
}


@dataclass(frozen=True)
class DeidConfig:
    salt: str
    retain_patient_characteristics: bool = False   # PatientSex/Age/Size/Weight
    reject_burned_in: bool = True
    max_date_shift_days: int = 365                 # per-patient shift in [-max, -1] ∪ [1, max]
    # Retain Safe Private option (113111) when non-empty: (group, creator, element offset) kept.
    safe_private: tuple[tuple[int, str, int], ...] = ()

    @property
    def options(self) -> tuple[str, ...]:
        """Enabled Table E.1-1 option columns."""
        extra = ("retain_patient_characteristics",) if self.retain_patient_characteristics else ()
        return DEFAULT_OPTIONS + extra


@dataclass
class DeidSeries:
    series_id: str              # ids.series_id(original SeriesInstanceUID[/image set])
    files: list[Path]           # de-identified files written under out_dir/<series_id>/
    image_set: str = ""         # "" or phase | real | imaginary | trace (frames.image_set) | reversed (GE pepolar)
    acquisition: dict = field(default_factory=dict)   # tasks.curation.deid.acquisition.describe of its first image


@dataclass
class DeidRejection:
    series_id: str | None       # None when the file could not even be parsed
    reason: str                 # unreadable_file | non_image_object | burned_in_annotation, or a frame-split reason
    n_files: int
    instance: str | None = None  # set when one source file is dropped and its series goes on
    failed: bool = False         # an error (ledger ``failed``, retried), not a data-quality decision
    detail: str | None = None    # for a failure: the exception and where (no values)
    traceback: str | None = None  # for a failure: the full traceback (restricted: may quote values)


@dataclass
class DeidResult:
    exam_id: str
    patient_id: str
    study_date: dt.date | None  # shifted
    series: list[DeidSeries]
    rejected: list[DeidRejection]
    study_description: str | None = None   # after Clean Descriptors (a protocol hint)


def _patient_key(ds: Dataset) -> str:
    """Original PatientID; an exam without one is its own patient (keyed by its study)."""
    pid = str(ds.get("PatientID", "") or "").strip()
    return pid or "study:" + str(ds.get("StudyInstanceUID", "")).strip()


def deidentify_dataset(ds: Dataset, cfg: DeidConfig, store: PseudonymStore, exam_id: str) -> Dataset:
    """Return a de-identified copy of ``ds`` (``ds`` itself is not modified).

    Args:
        ds: a parsed DICOM dataset (with file_meta when read from a file).
        cfg: de-identification options and salt.
        store: the pseudonym map (patient pseudonym and date shift).
        exam_id: the opaque exam id written to AccessionNumber and StudyID.
    Returns:
        A new dataset with file_meta rebuilt, ready for ``save_as(enforce_file_format=True)``.
    """
    key = _patient_key(ds)
    pseudonym = store.patient_pseudonym(key)
    sop_class = str(ds.get("SOPClassUID", "*"))
    # the dataset's own identifiers are scrubbed from every kept or cleaned text (docs/deid.md)
    pattern, dotted = phi_terms_of(ds)
    ctx = ActionContext(build_action_map(cfg.options, sop_class), cfg.salt,
                        store.date_shift_days(key, cfg.max_date_shift_days), pattern, frozenset(cfg.safe_private),
                        dotted)
    out = clean_dataset(ds, ctx)
    out.PatientName = pseudonym
    out.PatientID = pseudonym
    out.AccessionNumber = exam_id
    out.StudyID = exam_id
    out.PatientIdentityRemoved = "YES"
    codes = (["113100", "113105", "113107"] + (["113108"] if cfg.retain_patient_characteristics else [])
             + (["113111"] if cfg.safe_private else []))
    out.DeidentificationMethod = ["DICOM PS3.15 Annex E (mrifoundry)"] + [_DEID_CODES[c] for c in codes]
    items = []
    for code in codes:
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, "DCM", _DEID_CODES[code]
        items.append(item)
    out.DeidentificationMethodCodeSequence = Sequence(items)
    out.LongitudinalTemporalInformationModified = "MODIFIED"

    old_meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = out.get("SOPClassUID", old_meta.get("MediaStorageSOPClassUID", ""))
    meta.MediaStorageSOPInstanceUID = out.get("SOPInstanceUID") or remap_uid(
        old_meta.get("MediaStorageSOPInstanceUID", ""), cfg.salt)
    meta.TransferSyntaxUID = old_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MRIFOUNDRY"
    out.file_meta = meta
    return out


# --------------------------------------------------------------------------- exam level
#: the values the grouping pass reads from a header (series, class, order, patient, burned-in text)
_GROUPING = ("SeriesInstanceUID", "SOPClassUID", "SOPInstanceUID", "InstanceNumber", "PatientID",
             "StudyInstanceUID", "AccessionNumber", "BurnedInAnnotation", "ConversionType", "ImageType")


def _read_header(path: Path) -> Dataset | None:
    """Header (no pixels) of a DICOM file, or None when it is not parseable DICOM. Only the
    grouping values are decoded here (an undecodable one is dropped): every value is checked
    when the whole file is read (:func:`_read_full`), before anything is written. Decoding the
    whole header twice cost ≈ 1 ms a file (bench/run_cost.py)."""
    if not looks_like_dicom(str(path)):   # constant time: a forced parse of zeros or text can take minutes
        return None
    try:
        hdr = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        for keyword in _GROUPING:
            if keyword in hdr:
                try:
                    elem = hdr.data_element(keyword)   # converts the raw element: raises when it cannot
                    _ = elem.VM, elem.value
                except Exception:  # noqa: BLE001 - pydicom raises many types for a value it cannot read
                    del hdr[keyword]
        return hdr if hdr.get("SeriesInstanceUID") and hdr.get("SOPClassUID") else None
    except Exception:  # noqa: BLE001 - any parse failure means "not DICOM" here
        return None


def _read_full(path: Path, header: Dataset) -> Dataset:
    """Whole file, undecodable values dropped; a file truncated inside its pixel data falls back
    to the header only, so the continuity stage (not this one) rejects it as ``truncated_file``."""
    try:
        ds = drop_undecodable(pydicom.dcmread(path, force=True))
    except Exception:  # noqa: BLE001
        return drop_undecodable(header)
    # a forced read of a file cut short can "succeed" with fewer elements than its header had
    return ds if "SOPClassUID" in ds else drop_undecodable(header)


def _parse_date(value) -> dt.date | None:
    """The first DA value as a date; None when it is not one (two values, garbage)."""
    text = str(value[0] if isinstance(value, pydicom.multival.MultiValue) and len(value) else value).strip()
    try:
        return dt.datetime.strptime(text[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _is_image_class(sop_class: str) -> bool | None:
    """True/False for a registered SOP Class, None for a private/unknown one."""
    uid = UID(sop_class)
    return "Image Storage" in uid.name if uid.name != sop_class else None


def _burned_in(hdr: Dataset) -> bool:
    """Pixels that may show text: flagged, Secondary Capture, a capture device (ConversionType),
    or a screenshot by ImageType (GE "SCREEN SAVE", "SCREENSHOT", "CAPTURE"). DERIVED\\SECONDARY
    alone (MPR reformats) is left to continuity (``derived_series``)."""
    image_type = frames.image_type(hdr)
    return (str(hdr.get("BurnedInAnnotation", "")).upper() == "YES"
            or str(hdr.SOPClassUID) in SECONDARY_CAPTURE_CLASSES
            or bool(str(hdr.get("ConversionType", "") or "").strip())
            or any(("SCREEN" in str(v).upper() or "CAPTURE" in str(v).upper()) for v in image_type))


def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def _sort_key(item: tuple[Path, Dataset]) -> tuple:
    path, hdr = item
    try:
        number = int(hdr.get("InstanceNumber", 0) or 0)
    except (TypeError, ValueError):
        number = 0
    return number, str(hdr.get("SOPInstanceUID", "")), str(path)


def deidentify_exam(files: Iterable[Path], out_dir: Path, exam_id: str,
                    cfg: DeidConfig, store: PseudonymStore) -> DeidResult:
    """De-identify one exam's files into ``out_dir/<series_id>/<NNNN>.dcm``.

    Re-running overwrites the same names and leaves no stale or temporary files.

    Raises:
        OSError: the disk is full (the caller stops the run). Any other error in one series is
            returned as a ``failed`` :class:`DeidRejection` of that series (with its traceback for
            the restricted log); the exam's other series go on.
    """
    out_dir = Path(out_dir)
    by_series: dict[str, list[tuple[Path, Dataset]]] = {}
    unreadable = 0
    for path in sorted(Path(f) for f in files):
        hdr = _read_header(path)
        if hdr is None:
            unreadable += 1
            continue
        by_series.setdefault(ids.series_id(str(hdr.SeriesInstanceUID), cfg.salt), []).append((path, hdr))
    rejected = [DeidRejection(None, "unreadable_file", unreadable)] if unreadable else []
    series: list[DeidSeries] = []
    patient_id, study_date, study_description = "", None, None
    if by_series:   # the exam's patient: the first readable header in a stable order
        first = min((m for ms in by_series.values() for m in ms), key=_sort_key)[1]
        acc = str(first.get("AccessionNumber", "") or "").strip()
        store.record_exam(acc or "uid:" + str(first.get("StudyInstanceUID", "")), exam_id, _patient_key(first))
        patient_id = store.patient_pseudonym(_patient_key(first))
    for sid in sorted(by_series):
        members = sorted(by_series[sid], key=_sort_key)
        if cfg.reject_burned_in and any(_burned_in(h) for _, h in members):
            rejected.append(DeidRejection(sid, "burned_in_annotation", len(members)))
            shutil.rmtree(out_dir / sid, ignore_errors=True)
            continue
        out_dir.mkdir(parents=True, exist_ok=True)
        uid = str(members[0][1].SeriesInstanceUID)
        parts: dict[str, Path] = {}    # image set -> temp folder, written one file at a time
        counts: Counter = Counter()
        described: dict[str, dict] = {}
        split_failures: list[DeidRejection] = []
        try:
            non_image = 0
            for k, (path, hdr) in enumerate(members):
                image = _is_image_class(str(hdr.SOPClassUID))
                ds = _read_full(path, hdr) if image is not False else hdr
                if image is False or (image is None and not _has_pixels(ds)):
                    non_image += 1
                    continue
                try:
                    images = frames.split_images(ds)   # before de-identification: mosaics need the CSA header
                except frames.FrameSplitError as e:
                    split_failures.append(DeidRejection(sid, e.reason, 1, instance=f"src{k:04d}"))
                    continue
                for img in images:
                    key = frames.image_set(img)
                    if acquisition.ge_pepolar_reversed(img):   # stored mirrored: rows back as they lie
                        frames.mirror_rows(img)
                        # forward and reversed volumes in one series: two series, as dcm2niix writes them
                        key = "reversed" if acquisition.ge_pepolar_alternating(img) else key
                    acquisition.standardize(img, isotropic=key == "trace")   # private values made public first
                    if key not in parts:
                        parts[key] = Path(tempfile.mkdtemp(prefix=f".{sid}.tmp-", dir=out_dir))
                        mosaic = frames.is_mosaic(ds)   # a classic image lists every slice time: n = 0
                        described[key] = acquisition.describe(img, len(images) if mosaic else 0, mosaic=mosaic)
                    clean = deidentify_dataset(img, cfg, store, exam_id)
                    written = parts[key] / f"{counts[key]:04d}.dcm"
                    clean.save_as(written, enforce_file_format=True)
                    exam_reads.keep(written, clean)   # continuity and convert read it from memory
                    counts[key] += 1
                    if study_date is None and clean.get("StudyDate"):
                        study_date = _parse_date(clean.StudyDate)
                    study_description = study_description or str(clean.get("StudyDescription", "") or "") or None
            if non_image:
                rejected.append(DeidRejection(sid, "non_image_object", non_image))
            if split_failures and not parts:   # nothing of the series could be split: the series is rejected
                rejected.append(DeidRejection(sid, split_failures[0].reason, len(split_failures)))
            else:
                rejected.extend(split_failures)
            for key in [""] + sorted(k for k in parts if k):
                part_id = sid if not key else ids.series_id(f"{uid}/{key}", cfg.salt)
                if key not in parts:
                    shutil.rmtree(out_dir / part_id, ignore_errors=True)
                    continue
                dest = out_dir / part_id
                replace_dir(parts[key], dest)   # no half-written series is ever visible
                series.append(DeidSeries(part_id, [dest / f"{i:04d}.dcm" for i in range(counts[key])], image_set=key,
                                         acquisition=described[key]))
        except Exception as e:  # noqa: BLE001 — one series must not take its exam down
            if is_disk_full(e):
                raise
            part_ids = {sid} | {ids.series_id(f"{uid}/{k}", cfg.salt) for k in parts if k}
            series = [x for x in series if x.series_id not in part_ids]
            rejected = [r for r in rejected if r.series_id != sid]
            rejected.append(DeidRejection(sid, "deid_error", len(members), failed=True, detail=where(e),
                                          traceback=traceback.format_exc()))
            for part_id in part_ids:
                shutil.rmtree(out_dir / part_id, ignore_errors=True)
        finally:
            for folder in parts.values():
                shutil.rmtree(folder, ignore_errors=True)
    log.info("deid %s: %d series written, %d rejected", exam_id, len(series), len(rejected))
    return DeidResult(exam_id, patient_id, study_date, series, rejected, study_description)
