"""A PACS behind the :class:`tasks.curation.archive.base.Archive` protocol: C-FIND + C-GET with pynetdicom.

Configured by a URL (docs/pacs.md)::

    dicom://CALLED_AET@host:port?calling=OUR_AET&max_assoc=2&timeout=30&retries=3&backoff=1

``find`` and ``studies`` are Study Root C-FINDs at STUDY level. ``fetch`` asks the series of
the study (series-level C-FIND with NumberOfSeriesRelatedInstances) and C-GETs each series on
the same association, storing every instance received as ``dest/NNNNNN.dcm`` (opaque names,
temp file + rename) and appending its SOPInstanceUID to ``dest/pacs_received.jsonl``
(:mod:`tasks.curation.archive.pacs_receiver`). A
re-fetch skips complete series and C-GETs only the missing instances (IMAGE level) of the
others, so an interrupted transfer resumes without duplicates.

Messages and logs carry counts and reason codes only: never UIDs, accession numbers or names.
"""
from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path

from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ
from pynetdicom.sop_class import (StudyRootQueryRetrieveInformationModelFind,
                                  StudyRootQueryRetrieveInformationModelGet)

from mrifoundry.errors import RetrievalError
from mrifoundry.tasks.curation.archive.base import StudyRef
from mrifoundry.tasks.curation.archive.pacs_config import PacsConfig, parse_pacs_url
from mrifoundry.tasks.curation.archive.pacs_receiver import Receiver

_UNCOMPRESSED = ["1.2.840.10008.1.2", "1.2.840.10008.1.2.1"]
# every transfer syntax an image may be stored in: each gets its own presentation context so
# the PACS can send the stored bytes as they are instead of transcoding them
_IMAGE_TS = _UNCOMPRESSED + [
    "1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.2",        # deflated, big endian
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51",      # JPEG baseline, extended
    "1.2.840.10008.1.2.4.57", "1.2.840.10008.1.2.4.70",      # JPEG lossless, SV1
    "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81",      # JPEG-LS lossless, near-lossless
    "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",      # JPEG 2000 lossless, lossy
    "1.2.840.10008.1.2.5",                                   # RLE lossless
]
_IMAGE_SOP = [
    "1.2.840.10008.5.1.4.1.1.4",      # MR Image
    "1.2.840.10008.5.1.4.1.1.4.1",    # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.2",      # CT Image
    "1.2.840.10008.5.1.4.1.1.2.1",    # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.7",      # Secondary Capture
    "1.2.840.10008.5.1.4.1.1.7.3",    # Multi-frame Grayscale Word SC
]
_OTHER_SOP = [
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection
    "1.2.840.10008.5.1.4.1.1.11.1",   # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.104.1",  # Encapsulated PDF
    "1.2.840.10008.5.1.4.1.1.66",     # Raw Data
]
_PENDING = (0xFF00, 0xFF01)


# one semaphore per PACS (and cap) for the whole process: every PacsArchive of the same URL
# shares it, whichever thread or flow task made it
_SEMAPHORES: dict[tuple[str, int, str, int], threading.BoundedSemaphore] = {}
_SEM_LOCK = threading.Lock()


def _semaphore(cfg: PacsConfig) -> threading.BoundedSemaphore:
    key = (cfg.host, cfg.port, cfg.called_aet, cfg.max_assoc)
    with _SEM_LOCK:
        if key not in _SEMAPHORES:
            _SEMAPHORES[key] = threading.BoundedSemaphore(cfg.max_assoc)
        return _SEMAPHORES[key]


class _Transient(Exception):
    """An attempt failed in a way another attempt may fix (carries the reason code)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class PacsArchive:
    """A PACS reached over DICOM networking (Study Root C-FIND and C-GET).

    The PACS must know our calling AE title and allow it C-FIND and C-GET (docs/pacs.md).
    """

    def __init__(self, url: str | PacsConfig, study_cache_s: float = 300.0):
        self.cfg = parse_pacs_url(url) if isinstance(url, str) else url
        self._study_cache_s = study_cache_s
        self._studies: tuple[float, list[StudyRef]] | None = None
        self.last_receiver: Receiver | None = None   # the last fetch's receiver (tests, stats)

    # -- associations ---------------------------------------------------------------------
    def _ae(self) -> AE:
        ae = AE(ae_title=self.cfg.calling_aet)
        ae.connection_timeout = ae.acse_timeout = self.cfg.timeout
        ae.dimse_timeout = ae.network_timeout = self.cfg.timeout
        ae.maximum_pdu_size = 0  # no limit on what we receive: fewer, larger PDUs
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, _UNCOMPRESSED)
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, _UNCOMPRESSED)
        for sop in _IMAGE_SOP:
            for ts in _IMAGE_TS:
                ae.add_requested_context(sop, ts)
        for sop in _OTHER_SOP:
            ae.add_requested_context(sop, _UNCOMPRESSED)
        return ae

    @contextmanager
    def _association(self, receiver: Receiver | None = None):
        """An established association, under the per-PACS cap.

        Raises:
            RetrievalError: association_rejected (not retried: wrong AE title or not allowed).
            _Transient: pacs_unreachable (refused, timed out, rejected-transient).
        """
        ae = self._ae()
        roles = [build_role(s, scp_role=True) for s in _IMAGE_SOP + _OTHER_SOP]
        rejections: list[A_ASSOCIATE_RJ] = []
        # pynetdicom 3.0 races on a fast rejection: when the PACS closes the socket right
        # after its A-ASSOCIATE-RJ, the ACSE may see "not connected" before it reads the
        # RJ and report an abort (~7 % of rejections by a local Orthanc). The DUL thread
        # decodes the RJ PDU before it notices the close, so the PDU event is the truth.
        handlers = [(evt.EVT_PDU_RECV, lambda e: rejections.append(e.pdu)
                     if isinstance(e.pdu, A_ASSOCIATE_RJ) else None)]
        if receiver:
            handlers.append((evt.EVT_C_STORE, receiver.handle_store))
        with _semaphore(self.cfg):
            assoc = ae.associate(self.cfg.host, self.cfg.port, ae_title=self.cfg.called_aet,
                                 ext_neg=roles, evt_handlers=handlers)
            rj = rejections[0] if rejections else None
            if rj is not None and rj.result == 0x02:   # rejected-transient: e.g. at its limit
                raise _Transient("pacs_unreachable", f"the PACS is busy: {rj.reason_str}")
            if assoc.is_rejected or rj is not None:
                why = f": {rj.reason_str}" if rj is not None else ""
                raise RetrievalError("pacs", "association_rejected",
                                     f"the PACS rejected the association{why} "
                                     "(check AE titles and its allow-list)")
            if not assoc.is_established:
                raise _Transient("pacs_unreachable", "no association: connection refused or timed out")
            try:
                yield assoc
            finally:
                if assoc.is_established:
                    assoc.release()

    def _retrying(self, fn):
        """Run ``fn()`` with up to ``retries`` further attempts and exponential backoff.

        Raises:
            RetrievalError: the last attempt's reason (pacs_unreachable, transfer_incomplete …).
        """
        delay = self.cfg.backoff
        for attempt in range(self.cfg.retries + 1):
            try:
                return fn()
            except _Transient as e:
                if attempt == self.cfg.retries:
                    raise RetrievalError("pacs", e.reason, f"{e} (after {attempt + 1} attempt(s))") from e
                time.sleep(delay)
                delay *= 2

    @staticmethod
    def _find(assoc, query: Dataset) -> list[Dataset]:
        out = []
        for status, ident in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
            code = getattr(status, "Status", None)
            if code is None:
                raise _Transient("transfer_incomplete", "C-FIND cut off (association lost)")
            if code in _PENDING and ident is not None:
                out.append(ident)
            elif code not in _PENDING and code != 0x0000:
                raise _Transient("transfer_incomplete", f"C-FIND failed with status 0x{code:04X}")
        return out

    # -- Archive protocol -----------------------------------------------------------------
    def _study_query(self, accession: str) -> list[StudyRef]:
        q = Dataset()
        q.QueryRetrieveLevel = "STUDY"
        q.AccessionNumber = accession
        q.StudyInstanceUID = ""
        q.PatientID = ""
        q.NumberOfStudyRelatedInstances = ""

        def run():
            with self._association() as assoc:
                return self._find(assoc, q)
        refs = []
        for ds in self._retrying(run):
            acc = str(ds.get("AccessionNumber", "") or "").strip()
            uid = str(ds.get("StudyInstanceUID", "") or "")
            if not uid:
                continue
            refs.append(StudyRef(key=acc if acc else f"uid:{uid}", accession_number=acc, study_uid=uid,
                                 patient_mrn=str(ds.get("PatientID", "") or ""),
                                 n_files=int(ds.get("NumberOfStudyRelatedInstances", 0) or 0)))
        return sorted(refs, key=lambda r: (r.key, r.study_uid))

    def studies(self) -> list[StudyRef]:
        """Every study of the PACS (one universal C-FIND; cached for ``study_cache_s``).

        Raises:
            RetrievalError: pacs_unreachable, association_rejected.
        """
        now = time.monotonic()
        if self._studies is None or now - self._studies[0] > self._study_cache_s:
            self._studies = (now, self._study_query(""))
        return list(self._studies[1])

    def find(self, accession_number: str) -> list[StudyRef]:
        """Studies whose AccessionNumber is exactly ``accession_number`` ([] when unknown).

        Raises:
            RetrievalError: pacs_unreachable, association_rejected.
        """
        acc = accession_number.strip()
        if not acc:
            return []
        # '*' and '?' are wildcards in C-FIND and cannot be escaped: keep exact matches only
        return [r for r in self._study_query(acc) if r.accession_number == acc]

    def fetch(self, study: StudyRef, dest: Path) -> list[Path]:
        """Fetch every instance of ``study`` into ``dest`` (resuming what is already there).

        Raises:
            RetrievalError: pacs_unreachable, association_rejected, or transfer_incomplete when
                fewer instances than the PACS counted arrived after all retries.
        """
        rx = Receiver(Path(dest))
        self.last_receiver = rx
        state = {"connected": False}

        def attempt():
            try:
                with self._association(rx) as assoc:
                    state["connected"] = True
                    expected = self._fetch_series(assoc, study, rx)
            except _Transient as e:
                # cut after we were connected once: the transfer is incomplete, not the PACS absent
                if state["connected"] and e.reason == "pacs_unreachable":
                    raise _Transient("transfer_incomplete", "connection lost during the transfer") from e
                raise
            have = len(rx.by_sop)
            if have < max(expected, study.n_files):
                raise _Transient("transfer_incomplete",
                                 f"{have} of {max(expected, study.n_files)} instances received")
        self._retrying(attempt)
        return rx.files()

    def _fetch_series(self, assoc, study: StudyRef, rx: Receiver) -> int:
        """C-GET each series not yet complete; return the instance count the PACS reports."""
        q = Dataset()
        q.QueryRetrieveLevel = "SERIES"
        q.StudyInstanceUID = study.study_uid
        q.SeriesInstanceUID = ""
        q.NumberOfSeriesRelatedInstances = ""
        series = [(str(d.SeriesInstanceUID), int(d.get("NumberOfSeriesRelatedInstances", 0) or 0))
                  for d in self._find(assoc, q) if d.get("SeriesInstanceUID")]
        for uid, n in series:
            have = rx.count(uid)
            if have >= n:
                continue
            rx.series = uid
            if have == 0:
                self._get(assoc, "SERIES", study.study_uid, uid, None)
            else:
                missing = self._missing_instances(assoc, study.study_uid, uid, rx)
                for i in range(0, len(missing), 100):  # keep each identifier small
                    self._get(assoc, "IMAGE", study.study_uid, uid, missing[i:i + 100])
        return sum(n for _, n in series)

    def _missing_instances(self, assoc, study_uid: str, series_uid: str, rx: Receiver) -> list[str]:
        q = Dataset()
        q.QueryRetrieveLevel = "IMAGE"
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        q.SOPInstanceUID = ""
        with rx.lock:
            have = set(rx.by_sop)
        return sorted({str(d.SOPInstanceUID) for d in self._find(assoc, q) if d.get("SOPInstanceUID")} - have)

    @staticmethod
    def _get(assoc, level: str, study_uid: str, series_uid: str, sops: list[str] | None) -> None:
        q = Dataset()
        q.QueryRetrieveLevel = level
        q.StudyInstanceUID = study_uid
        q.SeriesInstanceUID = series_uid
        if sops is not None:
            q.SOPInstanceUID = sops
        for status, _ident in assoc.send_c_get(q, StudyRootQueryRetrieveInformationModelGet):
            if getattr(status, "Status", None) is None:
                raise _Transient("transfer_incomplete", "C-GET cut off (association lost)")
        # a final warning/failure status (some sub-operations failed) is judged by the counts
