"""PHI term rules shared by de-identification and the PHI audit (one tokeniser, one set of variants).

The PHI audit (:mod:`tasks.curation.audit.identifiers`) collects the identifying values of the
restricted zone's headers and searches the research zone for them as token sequences; the
de-identification scrubber (:mod:`tasks.curation.deid.profile`) removes a dataset's own
identifying values from its kept text. Both use the rules here, so that what the audit would flag
in a de-identified header is what de-identification removed:

- :func:`tokens`: lower-cased runs of ASCII letters/digits; a dotted number (a UID) is one token.
- :func:`variants`: the spellings of a value (name orders, date formats, phone digits …).
- :func:`distinctive`: long enough to identify anyone (short tokens, placeholders, layout words
  and common MR words are not).
- :func:`walk_identifiers`: which elements of a header are identifying, and of which kind.

This module imports nothing of the project (no import cycle between ``deid`` and ``audit``).
"""
from __future__ import annotations

import re
from collections.abc import Callable

__all__ = ["LAYOUT_WORDS", "MR_WORDS", "PLACEHOLDERS", "PRUNABLE_KINDS", "distinctive", "name_parts",
           "private_identifier", "private_text", "tokens", "variants", "walk_identifiers"]

# Dotted numbers (UIDs, dotted dates) are one token; otherwise runs of ASCII letters/digits.
# \x1e (ASCII record separator, scanners.ROW_SEP) is a token of its own: the values of a table column
# are joined with it, so no phrase matches across two rows ("…-01-01" + "1900-…" is no birth date).
TOKEN = re.compile(rb"[0-9]+(?:\.[0-9]+)+|[a-z0-9]+|\x1e")


def tokens(data: bytes | str) -> list[bytes]:
    """Lower-case tokens of ``data`` (UTF-8 for text; non-ASCII bytes separate tokens)."""
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    return TOKEN.findall(data.lower())


# placeholder values archives put in identifying fields: not identifiers, and they occur in
# ordinary headers (ImageType ...\NONE) and in Prefect's own tables
PLACEHOLDERS = frozenset({b"none", b"null", b"unknown", b"anonymous", b"anon", b"test", b"default", b"patient",
                          b"other", b"empty", b"missing", b"undefined", b"unnamed", b"nobody", b"anonymized"})
# words of the output layout and file formats: a PatientID "DICOM" or "RESEARCH" names no one,
# and every research path holds these words
LAYOUT_WORDS = frozenset({b"research", b"restricted", b"dicom", b"nifti", b"catalog", b"state", b"work",
                          b"staging", b"exams", b"series", b"slices", b"models", b"features", b"labelled",
                          b"evaluations", b"cache", b"volumes", b"prefect", b"mrifoundry", b"phantom", b"sample",
                          b"demo", b"image", b"images", b"quarantine"})
# common words of MR descriptions (sequence, plane, body part, contrast, vendor): a one-word
# value equal to one of these names no one, and removing it would empty "SAG T1 TSE" or
# "KNEE MRI" (a surname TSE or a first name ROUTINE still goes where the whole name is written)
MR_WORDS = frozenset(w.encode() for w in """
    mr mri nmr t1 t2 t1w t2w pd pdw flair stir dwi dti adc epi bold fmri asl swi tof mra mrv cine tse fse
    se gre spgr fspgr mprage mp2rage space cube vibe bravo vista thrive haste ssfse frfse dixon ideal
    fs fatsat water fat sat ax axi axial sag sagittal cor coronal obl oblique tra trans transverse iso
    loc localizer localiser scout survey plane planes pre post gad gado contrast dyn dynamic perfusion
    diffusion tensor trace map maps mip mpr recon reformat subtraction sub derived original primary
    secondary head brain knee spine cspine tspine lspine neck hip shoulder ankle wrist elbow hand foot
    pelvis abdomen abd liver chest breast cardiac heart prostate orbit orbits iac pituitary sella
    left right bilateral routine protocol study exam scan seq sequence mag magnitude phase real imaginary
    siemens philips ge toshiba canon hitachi general electric healthcare medical systems signa
    with without and for the wo fast turbo spin echo gradient inversion recovery multi single shot
    """.split())
#: kinds that vendors fill with vocabulary (pruned when every token is technical vocabulary)
PRUNABLE_KINDS = frozenset({"private", "institution", "device", "mrn", "accession"})


def distinctive(toks: tuple[bytes, ...], *, min_chars: int = 4, min_digits: int = 6) -> bool:
    """Long enough not to occur by chance. A single token: not a placeholder, layout or common MR
    word; digits-only ≥ ``min_digits``, others ≥ ``min_chars`` characters. Several tokens: ≥ 4
    characters together. The audit uses the defaults; de-identification removes one-word terms of
    ≥ 3 characters (``min_chars=3, min_digits=3``): a 1–2 character token is never removed."""
    if not toks:
        return False
    if len(toks) == 1:
        t = toks[0]
        if t in PLACEHOLDERS or t in LAYOUT_WORDS or t in MR_WORDS:
            return False
        return len(t) >= min_digits if t.replace(b".", b"").isdigit() and b"." not in t else len(t) >= min_chars
    return sum(len(t) for t in toks) >= 4


def name_parts(s: str) -> list[str]:
    """[family, given, middle] of a person name: ``DOE^JOHN^Q``, ``DOE, JOHN Q``, ``JOHN Q DOE``."""
    if "^" in s:
        return [p.strip() for p in s.split("=")[0].split("^")[:3]]
    if "," in s:
        family, rest = s.split(",", 1)
        return [family.strip(), *rest.split()[:2]]
    words = s.split()
    return [words[-1], *words[:-1][:2]] if words else []


def variants(s: str, kind: str) -> list[str]:
    """Spellings of the value ``s`` of ``kind`` that identify the same person (see docs/phi-audit.md).

    Names: family-given-middle, given-middle-family, given-family, family-given and the joined
    forms ``JohnDoe``/``DoeJohn`` (one token, kept when ≥ 6 characters); a one-word name gives no
    variant (it occurs in ordinary text).
    """
    out = [s]
    if kind in ("name", "physician"):
        parts = [p for p in name_parts(s) if p]
        if len(parts) >= 2:   # DOE^JOHN^Q, "DOE, JOHN Q", "JOHN Q DOE", "JOHN DOE", "DOE JOHN"
            family, given, middle = parts[0], parts[1], parts[2] if len(parts) > 2 else ""
            out += [f"{family} {given} {middle}", f"{given} {middle} {family}", f"{given} {family}",
                    f"{family} {given}"]
            fam, giv = b"".join(tokens(family)).decode(), b"".join(tokens(given)).decode()
            if len(fam) >= 2 and len(giv) >= 2 and len(fam) + len(giv) >= 6:
                out += [giv + fam, fam + giv]   # camelCase / run together: JohnDoe, DOEJOHN
        else:
            out = []   # a one-word name ("WHITE") occurs in ordinary text: too many false hits
    elif kind == "birth date":
        m = re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2})|(\d{1,2})/(\d{1,2})/(\d{4})", s)
        if m:
            y, mo, d = m.group(1, 2, 3) if m.group(1) else (m.group(6), m.group(4).zfill(2), m.group(5).zfill(2))
            out = [f"{y}{mo}{d}", f"{y}-{mo}-{d}", f"{mo}/{d}/{y}", f"{int(mo)}/{int(d)}/{y}", f"{d}/{mo}/{y}",
                   f"{y}.{mo}.{d}", f"{d}.{mo}.{y}"]
    elif kind == "phone":
        out.append(re.sub(r"\D", "", s))
    elif kind in ("address", "institution"):
        out += [p for p in s.split("^") if len(p.split()) >= 2]   # the street line alone
    return out


# --------------------------------------------------------------------------- which elements identify
STANDARD_UID_ROOT = "1.2.840.10008."
NAME_KEYWORDS = frozenset({"PatientName", "PatientBirthName", "PatientMotherBirthName", "OtherPatientNames",
                           "ResponsiblePerson", "PersonName"})
KIND_BY_KEYWORD = {
    "PatientID": "mrn", "OtherPatientIDs": "mrn", "MedicalRecordLocator": "mrn",
    "PatientBirthDate": "birth date", "PatientAddress": "address", "PatientTelephoneNumbers": "phone",
    "AccessionNumber": "accession", "RequestedProcedureID": "accession", "StudyID": "accession",
    "ScheduledProcedureStepID": "accession", "PerformedProcedureStepID": "accession",
    "InstitutionName": "institution", "InstitutionAddress": "institution",
    "StationName": "device", "DeviceSerialNumber": "device",
}
NOT_IDENTIFYING_UIDS = frozenset({"TransferSyntaxUID", "ImplementationClassUID", "CodingSchemeUID"})
PRIVATE_TEXT_VRS = frozenset({"LO", "SH", "ST", "LT", "UT", "UC", "PN", "CS", "AE", "UN", "OB"})
# technical attributes whose values are vocabulary, not identity (kept by the de-id profile)
VOCABULARY_KEYWORDS = frozenset({
    "Manufacturer", "ManufacturerModelName", "ImageType", "FrameType", "SequenceName", "PulseSequenceName",
    "ScanningSequence", "SequenceVariant", "ScanOptions", "MRAcquisitionType", "BodyPartExamined", "Modality",
    "SoftwareVersions", "ReceiveCoilName", "TransmitCoilName", "PatientPosition", "PhotometricInterpretation"})
_FLOAT = re.compile(r"[+-]?\d*\.?\d+(?:[eE][+-]?\d+)?")


def private_text(elem) -> str | None:
    """Text value of a private data element (not a private creator), or None."""
    if elem.tag.element < 0x1000 or elem.VR not in PRIVATE_TEXT_VRS:
        return None
    v = elem.value
    if isinstance(v, bytes):
        v = v.decode("latin-1")
        if not v.strip("\0 ").isprintable():
            return None
    s = str(v).strip("\0 ")
    return None if len(s) < 4 or _FLOAT.fullmatch(s) else s


def private_identifier(text: str) -> tuple[str, str] | None:
    """(value, kind) when a private text has the shape of an identifier, else None.

    Vendors fill private tags with vocabulary (``RESEARCH``, ``SENSE``, ``FMRI``, sequence
    names, coil names): a private word is no identifier. What is: a person name (``^``
    components), an id-like token (≥ 6 characters with a digit, e.g. a copied MRN or
    accession), or a sentence (≥ 5 words: free text that may quote anything). A copy of a
    standard identifier (PatientID in a private tag) is collected from the standard tag anyway.
    """
    if "^" in text and sum(1 for p in text.split("^") if p.strip().isalpha()) >= 2:
        return text, "name"
    toks = tokens(text)
    if len(toks) == 1 and len(toks[0]) >= 6 and any(c in b"0123456789" for c in toks[0]):
        return text, "private"
    if len(toks) >= 5:
        return text, "private"
    return None


def walk_identifiers(ds, on_value: Callable[[object, str], None],
                     on_vocabulary: Callable[[object], None] | None = None) -> None:
    """Call ``on_value(value, kind)`` for every identifying value of the pydicom dataset ``ds``
    (recursively, private elements by :func:`private_identifier`) and ``on_vocabulary(value)``
    for the values of technical attributes (and every CS value)."""
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value or []:
                walk_identifiers(item, on_value, on_vocabulary)
            continue
        if elem.tag.is_private:
            text = private_text(elem)
            found = private_identifier(text) if text else None
            if found:
                on_value(*found)
            continue
        kw = elem.keyword
        values = elem.value if elem.VM > 1 else [elem.value]
        if on_vocabulary is not None and (kw in VOCABULARY_KEYWORDS or elem.VR == "CS"):
            for v in values:
                on_vocabulary(v)
        if elem.VR == "PN":
            kind = "name" if kw in NAME_KEYWORDS else "physician"
        elif elem.VR == "UI":
            kind = "uid" if not (kw.endswith("ClassUID") or kw in NOT_IDENTIFYING_UIDS) else None
            values = [v for v in values if not str(v).startswith(STANDARD_UID_ROOT)]
        else:
            kind = KIND_BY_KEYWORD.get(kw)
        if kind:
            for v in values:
                on_value(v, kind)
