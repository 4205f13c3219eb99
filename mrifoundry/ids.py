"""Opaque, salted identifiers.

Everything that leaves the restricted zone (catalog keys, Prefect parameters, file
names, log lines) is named by these ids, never by accession numbers, MRNs or original
UIDs. The same salt always yields the same id, so re-runs and new exams of a known
patient line up; without the salt the ids cannot be reversed.
"""
from __future__ import annotations

import hashlib
import hmac

ID_LENGTH = 16  # hex chars = 64 bits: collision-free at Duke-110K scale (~1e5 items)


def opaque_id(kind: str, value: str, salt: str, length: int = ID_LENGTH) -> str:
    """HMAC-SHA256 of ``value`` keyed by ``salt``, namespaced by ``kind`` (exam, series, patient…)."""
    if not salt:
        raise ValueError("an empty salt would make ids reversible by dictionary attack")
    digest = hmac.new(salt.encode(), f"{kind}\x00{value}".encode(), hashlib.sha256).hexdigest()
    return digest[:length]


def exam_id(accession_number: str, salt: str) -> str:
    return "e" + opaque_id("exam", accession_number.strip(), salt, ID_LENGTH - 1)


def series_id(series_instance_uid: str, salt: str) -> str:
    return "s" + opaque_id("series", series_instance_uid.strip(), salt, ID_LENGTH - 1)


def patient_id(patient_key: str, salt: str) -> str:
    return "p" + opaque_id("patient", patient_key.strip(), salt, ID_LENGTH - 1)


def subject_key(label: str, salt: str) -> str:
    """Salted key of a collection's own subject label, the same in every collection.

    ``exams.subject_key`` (ingested BIDS/NIfTI collections, with the ``sub-`` label) and
    ``labelled_volumes.subject_key`` (downstream datasets, with the patient label) both come
    from here, so the overlap check can join them. Surrounding whitespace and a leading
    ``sub-`` are dropped first: ``"sub-01"`` and ``"01"`` give the same key.

    Raises:
        ValueError: an empty label, or an empty salt.
    """
    norm = label.strip()
    if norm.startswith("sub-"):
        norm = norm[4:]
    if not norm:
        raise ValueError(f"subject label {label!r} is empty")
    return opaque_id("subject", norm, salt)
