"""The exam's own identifiers as search terms, and the text scrubbing that removes them.

:func:`phi_terms_of` collects what the PHI audit would call an identifier in a dataset (names in
every spelling, ids, places; the rules of :mod:`tasks.curation.phi_terms`), :func:`scrub_text`
removes them from a kept value, :func:`clean_text` adds Clean Descriptors' date and long-number
rules. Used by :mod:`tasks.curation.deid.profile` on every text value it keeps or cleans.
"""
from __future__ import annotations

import functools
import re

from pydicom.dataset import Dataset

from mrifoundry.tasks.curation import phi_terms

_DATE_LIKE = re.compile(r"(?<!\d)\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}(?!\d)")
_LONG_DIGITS = re.compile(r"\d{5,}")   # MRNs, accession numbers, compact dates
# Attributes whose values feed the descriptor scrubber (besides every PN).
_PHI_KEYWORDS = (
    "PatientID", "OtherPatientIDs", "IssuerOfPatientID", "AccessionNumber", "StudyID", "PatientBirthDate",
    "PatientAddress", "PatientTelephoneNumbers", "MedicalRecordLocator", "AdmissionID",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName", "StationName",
    "DeviceSerialNumber", "RequestedProcedureID", "ScheduledProcedureStepID", "PerformedProcedureStepID",
)


def clean_text(text: str, phi_pattern: re.Pattern | None, dotted: frozenset[str] = frozenset()) -> str:
    """Clean Descriptors: keep the text, drop known PHI terms, date-like strings and digit runs ≥ 5."""
    out = scrub_text(text, phi_pattern, dotted)
    out = _LONG_DIGITS.sub(" ", _DATE_LIKE.sub(" ", out))
    return text if out == text else " ".join(out.split())


_MARK = "\ue000"   # a private-use character: where a term was removed, before separators collapse
_SEPARATORS = r"[\s_\-.^,;:/=+|()\[\]]*"
_GAP = re.compile(rf"({_SEPARATORS}){_MARK}(?:{_SEPARATORS}{_MARK})*({_SEPARATORS})")
_DOTTED = re.compile(r"(?<![0-9A-Za-z.])[0-9]+(?:\.[0-9]+)+(?![0-9A-Za-z])")


def scrub_text(text: str, phi_pattern: re.Pattern | None, dotted: frozenset[str] = frozenset()) -> str:
    """Remove every match of ``phi_pattern`` (the dataset's own identifiers, :func:`phi_pattern`)
    from ``text`` and keep the rest readable: the separators around a removed term collapse to
    one (``"tse_DOE_JOHN_2d"`` → ``"tse_2d"``, ``"tse2d1_JOHN_DOE"`` → ``"tse2d1_"``,
    ``"SAG DOE T1"`` → ``"SAG T1"``). ``dotted``: UIDs (and dotted dates) removed where one is a
    whole token (:func:`phi_terms_of`). Dates and digit runs stay (that is :func:`clean_text`)."""
    if (phi_pattern is None and not dotted) or not text:
        return text
    plain = text.replace(_MARK, "")
    marked = phi_pattern.sub(_MARK, plain) if phi_pattern is not None else plain
    if dotted and "." in marked:
        marked = _DOTTED.sub(lambda m: _MARK if m.group() in dotted else m.group(), marked)
    if marked == text:
        return text

    def gap(m: re.Match) -> str:
        left, right = m.group(1), m.group(2)
        if m.start() == 0:
            return ""                       # removed at the start: no leading separator
        if m.end() == len(marked):
            return left                     # removed at the end: "tse2d1_"
        return left or right or " "         # between two words: one separator
    return " ".join(_GAP.sub(gap, marked).split())


# kind of each non-PN attribute that feeds the scrubber (the audit's kinds where it has one)
_TERM_KINDS = {"IssuerOfPatientID": "institution", "AdmissionID": "accession",
               "InstitutionalDepartmentName": "institution", "MedicalRecordLocator": "mrn"}


def own_identifier_terms(ds: Dataset) -> set[tuple[bytes, ...]]:
    """The identifying values of ``ds`` itself as token sequences (:func:`phi_terms.tokens`).

    - what the PHI audit would collect from this header (:func:`phi_terms.walk_identifiers`
      with the audit's variants and :func:`phi_terms.distinctive`): name orders, joined names,
      dates, ids, UIDs, identifier-shaped private text — so the audit finds none of them after
      de-identification;
    - every PN value (incl. physicians and operators) and its components, and the values of
      :data:`_PHI_KEYWORDS` whole and per ``^`` part (a department "RADIOLOGY MRI" does not
      strip "MRI"); one-token terms of ≥ 3 characters that are not common MR words (a 1–2
      character token or "T2" is never removed);
    - minus the phrases of the kinds vendors fill with vocabulary whose every token is a
      technical value of this header (a StationName equal to ManufacturerModelName), as the
      audit prunes them.
    """
    found: list[tuple[str, str]] = []
    vocabulary: set[bytes] = set()
    phi_terms.walk_identifiers(ds, lambda v, k: found.append((str(v or "").strip().strip("\0"), k)),
                               lambda v: vocabulary.update(phi_terms.tokens(str(v or ""))))

    def collect(d: Dataset) -> None:
        for elem in d:
            if elem.VR == "SQ":
                for item in elem.value or []:
                    collect(item)
            elif elem.VR == "PN" or elem.keyword in _PHI_KEYWORDS:
                kind = "name" if elem.VR == "PN" else _TERM_KINDS.get(elem.keyword) or \
                    phi_terms.KIND_BY_KEYWORD.get(elem.keyword, "accession")
                for v in (elem.value if elem.VM > 1 else [elem.value]):
                    s = str(v or "").strip().strip("\0")
                    found.append((s, kind))
                    # Name components are PHI one by one; other values only whole or per ^-part.
                    split = r"[\^=\s,]+" if elem.VR == "PN" else r"\^+"
                    found.extend((t, kind + " part") for t in re.split(split, s) if t.strip())
    collect(ds)

    terms: dict[tuple[bytes, ...], str] = {}
    for value, kind in found:
        if not value:
            continue
        for spelling in [value] if kind.endswith(" part") else phi_terms.variants(value, kind):
            toks = tuple(phi_terms.tokens(spelling))
            if phi_terms.distinctive(toks, min_chars=3, min_digits=3):
                terms.setdefault(toks, kind.removesuffix(" part"))
            if kind == "name part":   # "MARY ANN" given name: each word is PHI on its own
                terms.update({(t,): "name" for t in toks
                              if len(toks) > 1 and phi_terms.distinctive((t,), min_chars=3, min_digits=3)})
    return {t for t, kind in terms.items()
            if not (kind in phi_terms.PRUNABLE_KINDS and all(x in vocabulary for x in t)
                    and (kind not in ("mrn", "accession") or not any(x.isdigit() for x in t)))}


def phi_terms_of(ds: Dataset) -> tuple[re.Pattern | None, frozenset[str]]:
    """(:func:`phi_pattern` of ``ds``, its dotted-number identifiers: UIDs, dotted dates).

    Dotted numbers are matched as whole tokens by :func:`scrub_text` from a set, not compiled into
    the pattern: every image has its own SOPInstanceUID, and the pattern of the rest is then the
    same for all images of an exam (compiled once, cached)."""
    terms = own_identifier_terms(ds)
    dotted = frozenset(t[0].decode("ascii") for t in terms if len(t) == 1 and b"." in t[0])
    return _compile_terms(frozenset(t for t in terms if not (len(t) == 1 and b"." in t[0]))), dotted


def phi_pattern(ds: Dataset) -> re.Pattern | None:
    """Pattern of the identifying values of ``ds`` (:func:`own_identifier_terms`), longest first.

    Matching follows the audit's tokens, case-insensitively: the tokens of a term in order with
    any non-alphanumeric separators, or none, between them (``DOE^JOHN``, ``JOHN_DOE``,
    ``DOE, JOHN``, ``JohnDoe`` …). A term that begins or ends with a letter is bounded by any
    non-letter, so digits are boundaries (``tse2d1_JOHN`` loses ``JOHN``); one that begins or ends
    with a digit is bounded by a non-alphanumeric that is not a dotted-number continuation (an
    MRN inside a UID is not cut).
    """
    return phi_terms_of(ds)[0]


@functools.lru_cache(maxsize=64)
def _compile_terms(terms: frozenset[tuple[bytes, ...]]) -> re.Pattern | None:
    if not terms:
        return None
    alts = []
    for toks in sorted(terms, key=lambda t: (-sum(map(len, t)) - len(t), t)):
        words = [t.decode("ascii") for t in toks if t != b"\x1e"]
        if not words:
            continue
        body = r"[^a-z0-9]*".join(re.escape(w) for w in words)
        head = r"(?<![a-z])" if words[0][0].isalpha() else r"(?<![a-z0-9])(?<![0-9]\.)"
        tail = r"(?![a-z])" if words[-1][-1].isalpha() else r"(?![a-z0-9])(?!\.[0-9])"
        alts.append(head + body + tail)
    return re.compile("|".join(alts), re.IGNORECASE) if alts else None
