"""What the PHI audit looks for: every identifying value of the restricted zone.

:func:`collect_identifiers` reads the raw source DICOM headers listed in
``restricted/staging/*/retrieve.json``, the restricted Parquet tables and (optionally) the report
export into :class:`Identifiers`: each value with its normalised variants (name orders, date
formats …) as a tuple of :func:`tokens`, minus values that are technical vocabulary.
"""
from __future__ import annotations

import csv
import hashlib
import json
import re
from array import array
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

import pyarrow.parquet as pq
import pydicom
from pydicom.dataset import Dataset

from mrifoundry.tasks.curation import phi_terms
from mrifoundry.tasks.curation.phi_terms import tokens

__all__ = ["Identifiers", "collect_identifiers", "sidecar_identifiers", "tokens"]

# The tokeniser, the variants, the distinctiveness rule and which header elements identify are
# shared with de-identification (tasks/curation/phi_terms.py): what this audit would flag in a
# de-identified header is what de-identification removed.
_STANDARD_UID_ROOT = phi_terms.STANDARD_UID_ROOT
_NAME_KEYWORDS = phi_terms.NAME_KEYWORDS
_KIND_BY_KEYWORD = phi_terms.KIND_BY_KEYWORD
_NOT_IDENTIFYING_UIDS = phi_terms.NOT_IDENTIFYING_UIDS
_REPORT_NAME = re.compile(r"\b[A-Z][A-Za-z'\-]+, [A-Z][A-Za-z'\-]+(?: [A-Z]\.?)?")


def _uid_hash(token: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(token, digest_size=8).digest(), "little")


@dataclass
class Identifiers:
    """Identifying values as token tuples with their kind; :meth:`find` looks them up.

    UIDs (one token each) are kept apart as 8-byte hashes: a source file has its own
    SOPInstanceUID, so a Duke-size archive has ≈ 7 M of them (≈ 1 GB as phrases, 55 MB so). Two
    UIDs share a hash with odds of ≈ 1 in 2⁶⁴ per pair: a false hit, never a missed one."""

    phrases: dict[tuple[bytes, ...], str] = field(default_factory=dict)
    vocabulary: set[bytes] = field(default_factory=set)   # tokens of technical header values
    unreadable_sources: int = 0                            # source files that could not be parsed
    _index: dict[bytes, list[tuple[tuple[bytes, ...], str]]] | None = field(default=None, repr=False)
    _uids_added: array = field(default_factory=lambda: array("Q"), repr=False)
    _uids: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64), repr=False)   # sorted, unique

    def add(self, value: object, kind: str) -> None:
        """Add ``value`` and its normalised variants (first kind added for a phrase wins)."""
        s = str(value or "").strip().strip("\0")
        if not s:
            return
        for variant in _variants(s, kind):
            toks = tuple(tokens(variant))
            if not _distinctive(toks):
                continue
            if kind == "uid" and len(toks) == 1 and b"." in toks[0]:
                self._uids_added.append(_uid_hash(toks[0]))
            else:
                self.phrases.setdefault(toks, kind)
                self._index = None

    def merge(self, other: "Identifiers") -> None:
        """Add ``other``'s phrases, UIDs, vocabulary and unreadable sources (a phrase already here
        keeps its kind)."""
        if other.vocabulary is not self.vocabulary:   # a per-file scratch shares this one's
            self.vocabulary |= other.vocabulary
        self.unreadable_sources += other.unreadable_sources
        for phrase, kind in other.phrases.items():
            self.phrases.setdefault(phrase, kind)
        self._index = None
        self._uids_added.extend(other._uids_added)
        if other._uids.size:
            self._uids = np.union1d(self._uids, other._uids)

    def _uid_set(self) -> np.ndarray:
        if self._uids_added:
            self._uids = np.union1d(self._uids, np.frombuffer(self._uids_added, dtype=np.uint64))
            self._uids_added = array("Q")
        return self._uids

    def add_vocabulary(self, value: object) -> None:
        """Tokens of a technical, non-identifying header value (Manufacturer, ImageType …)."""
        self.vocabulary.update(tokens(str(value or "")))

    def prune(self) -> int:
        """Drop phrases of the kinds that vendors fill with vocabulary (private text, institution,
        device, and alphabetic ids) whose every token is technical vocabulary: an InstitutionName
        equal to the Manufacturer, a StationName equal to the model, a private copy of
        ImageType. Names, dates, addresses, UIDs and numeric ids are never pruned.
        Returns the number dropped."""
        drop = [p for p, kind in self.phrases.items()
                if kind in _PRUNABLE_KINDS and all(t in self.vocabulary for t in p)
                and (kind not in ("mrn", "accession") or not any(t.isdigit() for t in p))]
        for p in drop:
            del self.phrases[p]
        self._index = None
        return len(drop)

    def kinds(self) -> Counter:
        out = Counter(self.phrases.values())
        if self._uid_set().size:
            out["uid"] += int(self._uid_set().size)
        return out

    def __len__(self) -> int:
        return len(self.phrases) + int(self._uid_set().size)

    def find(self, data: bytes | str | list[bytes]) -> set[str]:
        """Kinds of the identifiers occurring in ``data`` as whole-token sequences."""
        toks = data if isinstance(data, list) else tokens(data)
        if self._index is None:
            self._index = {}
            for phrase, kind in self.phrases.items():
                self._index.setdefault(phrase[0], []).append((phrase[1:], kind))
        distinct = set(toks)
        present = self._index.keys() & distinct   # fast path: one C-level set intersection
        found = self._uid_kinds(distinct)
        if not present:
            return found
        for i, t in enumerate(toks):
            if t in present:
                for rest, kind in self._index[t]:
                    if not rest or tuple(toks[i + 1:i + 1 + len(rest)]) == rest:
                        found.add(kind)
        return found


    def _uid_kinds(self, distinct: set[bytes]) -> set[str]:
        uids = self._uid_set()
        if not uids.size:
            return set()
        for t in distinct:
            if b"." in t:   # only a UID-shaped token can be one (tokens keep dotted numbers whole)
                h = np.uint64(_uid_hash(t))
                i = int(uids.searchsorted(h))
                if i < uids.size and uids[i] == h:
                    return {"uid"}
        return set()


_PLACEHOLDERS = phi_terms.PLACEHOLDERS
_LAYOUT_WORDS = phi_terms.LAYOUT_WORDS
_PRUNABLE_KINDS = phi_terms.PRUNABLE_KINDS
_VOCABULARY_KEYWORDS = phi_terms.VOCABULARY_KEYWORDS
_distinctive = phi_terms.distinctive
_name_parts = phi_terms.name_parts
_variants = phi_terms.variants
_private_text = phi_terms.private_text
_private_identifier = phi_terms.private_identifier


def _collect_dataset(ds: Dataset, ids: Identifiers) -> None:
    phi_terms.walk_identifiers(ds, ids.add, ids.add_vocabulary)


def sidecar_identifiers(sidecar: dict) -> list[tuple[str, str]]:
    """(value, kind) of the identifying fields of a BIDS/dcm2niix JSON sidecar. Its keys are DICOM
    keywords, so a key is identifying exactly when the DICOM element is (PN, instance UIDs, ids)."""
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    out = []
    for key, value in sidecar.items():
        tag = tag_for_keyword(key)
        vr = dictionary_VR(tag) if tag is not None else None
        if vr == "PN":
            kind = "name" if key in _NAME_KEYWORDS else "physician"
        elif vr == "UI":
            kind = "uid" if not (key.endswith("ClassUID") or key in _NOT_IDENTIFYING_UIDS) else None
        else:
            kind = _KIND_BY_KEYWORD.get(key)
        if kind:
            for v in value if isinstance(value, list) else [value]:
                if v not in (None, "") and not str(v).startswith(_STANDARD_UID_ROOT):
                    out.append((str(v), kind))
    return out


def _collect_ingest(restricted: Path, ids: Identifiers) -> None:
    """Ingested NIfTI collections (restricted/ingest/*/sources.parquet): raw subject/session labels,
    identifying sidecar fields, and the text fields of the source NIfTI headers."""
    import nibabel as nib
    for manifest in sorted(restricted.glob("ingest/*/sources.parquet")):
        for row in pq.read_table(manifest).to_pylist():
            ids.add(row.get("subject"), "subject label")
            ids.add(row.get("session"), "subject label")
            for js in row.get("sidecar_files") or []:
                try:
                    data = json.loads(Path(js).read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    ids.unreadable_sources += 1
                    continue
                for value, kind in sidecar_identifiers(data if isinstance(data, dict) else {}):
                    ids.add(value, kind)
                for key in _VOCABULARY_KEYWORDS | {"ManufacturersModelName"}:
                    ids.add_vocabulary(data.get(key) if isinstance(data, dict) else None)
            try:
                hdr = nib.load(row["source_path"]).header
                texts = [hdr.get(k) for k in ("descrip", "aux_file", "db_name", "intent_name") if k in hdr]
                texts += [e.get_content() for e in getattr(hdr, "extensions", [])]
            except Exception:  # noqa: BLE001 - an unreadable source was rejected at ingest
                ids.unreadable_sources += 1
                continue
            for t in texts:
                text = t.tobytes() if hasattr(t, "tobytes") else t
                if isinstance(text, bytes):
                    text = text.split(b"\0")[0].decode("latin-1")
                ids.add(str(text), "source header")


def _collect_reports(path: Path, ids: Identifiers) -> None:
    """The report export (CSV or Parquet): ids, names, birth dates and report text fragments."""
    if path.suffix == ".parquet":
        rows: Iterable[dict] = pq.read_table(path).to_pylist()
    else:
        fh = path.open(newline="", encoding="utf-8", errors="replace")
        rows = csv.DictReader(fh)
    for row in rows:
        for col, v in row.items():
            c = (col or "").lower()
            if v in (None, ""):
                continue
            if "accession" in c:
                ids.add(v, "accession")
            elif "mrn" in c or c == "patient_id":
                ids.add(v, "mrn")
            elif "birth" in c or c == "dob":
                ids.add(v, "birth date")
            elif "name" in c:
                ids.add(v, "name")
            elif "text" in c or "report" == c:
                text = str(v)
                for name in _REPORT_NAME.findall(text):
                    ids.add(name, "physician")
                for line in text.splitlines():   # whole sentences: only leaked report text has them
                    if len(tokens(line)) >= 5:
                        ids.add(line, "report text")


def _collect_staging(retrieves: list[Path], vocabulary: set[bytes] | None = None) -> Identifiers:
    """The patient keys and source headers of these exams (``restricted/staging/*/retrieve.json``)."""
    ids = Identifiers(vocabulary=set() if vocabulary is None else vocabulary)
    for retrieve in retrieves:
        got = json.loads(Path(retrieve).read_text())
        ids.add(got.get("patient_key"), "mrn")
        for f in got.get("files", []):
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, force=True)
                if "SOPClassUID" not in ds and "StudyInstanceUID" not in ds:
                    raise ValueError("not DICOM")
                # force-read junk parses lazily: iterating it raises (unknown VR), so collect
                # into a scratch set first and keep it only when the whole file parsed
                scratch = Identifiers(vocabulary=ids.vocabulary)
                _collect_dataset(ds, scratch)
                if getattr(ds, "file_meta", None) is not None:
                    _collect_dataset(ds.file_meta, scratch)
            except Exception:  # noqa: BLE001 - unreadable source files carry nothing we can collect
                ids.unreadable_sources += 1
                continue
            ids.merge(scratch)
    return ids


#: exams per chunk a worker process reads; below two chunks the headers are read in this process
CHUNK_EXAMS = 100


def _staging_in_processes(retrieves: list[Path], ids: Identifiers, workers: int) -> None:
    """:func:`_collect_staging` in ``workers`` spawned processes (every source header is parsed:
    ≈ 0.6 ms a file, ≈ 70 min for Duke's 7 M files on one core), merged in exam order."""
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    chunks = [retrieves[i:i + CHUNK_EXAMS] for i in range(0, len(retrieves), CHUNK_EXAMS)]
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        for part in pool.map(_collect_staging, chunks):
            ids.merge(part)


def collect_identifiers(out: Path, reports_export: Path | None = None, workers: int = 1) -> Identifiers:
    """Every identifying value held in ``out/restricted`` (and the report export, if given);
    ``workers`` > 1 reads the source headers in that many processes.

    Raises:
        FileNotFoundError: ``out/restricted`` does not exist (nothing to audit against).
    """
    restricted = Path(out) / "restricted"
    if not restricted.is_dir():
        raise FileNotFoundError(f"{restricted} not found: run the curate flow first")
    ids = Identifiers()
    for table, cols in (("reports/reports.parquet", {"accession_number": "accession", "patient_mrn": "mrn"}),
                        ("archive_index.parquet", {"accession_number": "accession", "patient_mrn": "mrn",
                                                   "study_uid": "uid", "series_uid": "uid"}),
                        ("selection.parquet", {"study_key": "accession"})):
        if (restricted / table).exists():
            t = pq.read_table(restricted / table)
            for col, kind in cols.items():
                if col in t.column_names:
                    for v in set(t.column(col).to_pylist()):
                        ids.add(str(v).removeprefix("uid:"), "uid" if str(v).startswith("uid:") else kind)
    retrieves = sorted(restricted.glob("staging/*/retrieve.json"))
    if workers > 1 and len(retrieves) >= 2 * CHUNK_EXAMS:
        _staging_in_processes(retrieves, ids, workers)
    else:
        ids.merge(_collect_staging(retrieves, ids.vocabulary))
    _collect_ingest(restricted, ids)
    if reports_export is not None:
        _collect_reports(Path(reports_export), ids)
    ids.prune()
    return ids
