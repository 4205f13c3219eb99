"""PS3.15 Annex E Table E.1-1 as data: load it and resolve one action per attribute.

The table ships as ``tasks/curation/deid/ps315_basic_profile.csv`` (source and version in
docs/deid.md). An *action* is one of the standard's codes:

    D dummy value · Z zero length · X remove · K keep · C clean · U consistent new UID

The Basic Profile column may hold a combined code (X/Z, X/D, Z/D, X/Z/D, X/Z/U*); we pick
the most protective choice that keeps the object valid: D when the attribute is Type 1 in
the object's IOD, Z when Type 2, otherwise X (see :data:`REQUIRED_TYPES`).
An enabled option column overrides the Basic Profile action.

The second half applies actions to a pydicom dataset: :func:`clean_dataset` walks it
recursively (into every sequence) and transforms each value; attributes the table does not
list go through a VR-based safety net (:func:`_fallback_action`).
"""
from __future__ import annotations

import copy
import csv
import datetime as dt
import functools
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mrifoundry.tasks.curation import phi_terms
from mrifoundry.tasks.curation.deid.own_terms import (  # noqa: F401 - re-exported
    _PHI_KEYWORDS, clean_text, own_identifier_terms, phi_pattern, phi_terms_of, scrub_text,
)

TABLE_PATH = Path(__file__).parent / "ps315_basic_profile.csv"
DUMMY_TEXT = "ANONYMIZED"
_STANDARD_UID_ROOT = "1.2.840.10008."                     # registered DICOM UIDs: classes, syntaxes, …
_TEXT_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"}
_DUMMY_BY_VR = {"DA": "19000101", "TM": "000000", "DT": "19000101000000", "IS": "0", "DS": "0", "AS": "000Y"}

OPTION_COLUMNS = (
    "retain_safe_private",
    "retain_uids",
    "retain_device_identity",
    "retain_institution_identity",
    "retain_patient_characteristics",
    "retain_long_full_dates",
    "retain_long_modified_dates",
    "clean_descriptors",
    "clean_structured_content",
    "clean_graphics",
)
#: The options mrifoundry always applies (docs/deid.md says why).
DEFAULT_OPTIONS = ("clean_descriptors", "retain_long_modified_dates")

# When two enabled options disagree, the one that keeps more information wins: an option
# exists to relax the Basic Profile, never to tighten it.
_OPTION_RANK = {"K": 0, "C": 1, "U": 2, "D": 3, "Z": 4, "X": 5}

ENHANCED_MR_CLASSES = frozenset({
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image Storage
    "1.2.840.10008.5.1.4.1.1.4.2",  # MR Spectroscopy Storage
    "1.2.840.10008.5.1.4.1.1.4.3",  # Enhanced MR Color Image Storage
})

#: Type (1 or 2) of attributes with a combined code in the IODs we write, per SOP Class
#: ("*" = any). Only entries that change the X/Z/D choice are needed; unknown = Type 3.
#: Enhanced General Equipment (Enhanced MR IODs) makes DeviceSerialNumber Type 1.
REQUIRED_TYPES: dict[str, dict[str, int]] = {
    **{uid: {"DeviceSerialNumber": 1, "ContentDate": 1, "ContentTime": 1} for uid in ENHANCED_MR_CLASSES},
    "*": {"ContentDate": 2, "ContentTime": 2},  # General Image: Type 2C for MR Image Storage
}


@dataclass(frozen=True)
class ProfileRow:
    """One row of Table E.1-1."""

    tag: str                      # "(0010,0010)", "(60XX,3000)", "(50XX,XXXX)", private row
    keyword: str                  # pydicom keyword; "" for ranges
    name: str
    basic_profile: str            # D Z X K C U or a combined code
    options: dict[str, str] = field(default_factory=dict)   # option column -> action


def load_table(path: Path = TABLE_PATH) -> list[ProfileRow]:
    """Read the Table E.1-1 CSV.

    Raises:
        ValueError: a row has an unknown action code (a corrupted or hand-edited table).
    """
    rows = []
    with Path(path).open(newline="") as f:
        for rec in csv.DictReader(f):
            opts = {c: rec[c] for c in OPTION_COLUMNS if rec.get(c)}
            for code in [rec["basic_profile"], *opts.values()]:
                if not set(code.replace("*", "").split("/")) <= set(_OPTION_RANK):
                    raise ValueError(f"unknown action code {code!r} for {rec['tag']}")
            rows.append(ProfileRow(rec["tag"], rec["keyword"], rec["name"], rec["basic_profile"], opts))
    return rows


def resolve_action(row: ProfileRow, options: Iterable[str], attr_type: int | None = None) -> str:
    """The single action (D Z X K C U) for ``row`` under the enabled ``options``.

    Args:
        row: a table row.
        options: enabled option column names (see :data:`OPTION_COLUMNS`).
        attr_type: the attribute's Type (1, 2) in the object's IOD, None = Type 3/unknown.
    """
    chosen = [row.options[o] for o in options if o in row.options]
    if chosen:
        return min(chosen, key=_OPTION_RANK.__getitem__)
    codes = row.basic_profile.replace("*", "").split("/")
    if len(codes) == 1:
        return codes[0]
    # Combined code: a Type 1 attribute needs a value, a Type 2 one must be present.
    if attr_type == 1 and "D" in codes:
        return "D"
    if attr_type == 1 and "U" in codes:
        return "U"
    if attr_type in (1, 2) and "Z" in codes:
        return "Z"
    return "X" if "X" in codes else codes[-1]   # Z/D for a Type 3 attribute -> Z


@dataclass(frozen=True)
class ActionMap:
    """Effective actions for one option set and SOP Class; look up by integer tag."""

    by_tag: dict[int, str]               # exact tags
    by_masked: dict[int, str]            # repeating groups (60xx,eeee): key = tag with group low byte 0
    curve_action: str | None             # (50XX,XXXX)
    private_action: str                  # (gggg,eeee), gggg odd

    def action_for(self, tag: int) -> str | None:
        """Action for ``tag``; None when Table E.1-1 does not list it."""
        group = tag >> 16
        if group % 2 == 1:
            return self.private_action
        if tag in self.by_tag:
            return self.by_tag[tag]
        if 0x5000 <= group <= 0x50FF:
            return self.curve_action
        if 0x6000 <= group <= 0x60FF:
            # An overlay plane without its Overlay Data is invalid: the plane follows (60XX,3000).
            return self.by_masked.get(tag & 0xFF00FFFF, self.by_masked.get(0x60003000))
        return None


@functools.lru_cache(maxsize=32)
def build_action_map(options: tuple[str, ...] = DEFAULT_OPTIONS, sop_class_uid: str = "*",
                     path: Path = TABLE_PATH) -> ActionMap:
    """Resolve every table row for ``options`` and the IOD of ``sop_class_uid``.

    Raises:
        ValueError: an option name is not a column of the table.
    """
    unknown = set(options) - set(OPTION_COLUMNS)
    if unknown:
        raise ValueError(f"unknown profile options: {sorted(unknown)}")
    types = {**REQUIRED_TYPES["*"], **REQUIRED_TYPES.get(sop_class_uid, {})}
    by_tag, by_masked, curve, private = {}, {}, None, "X"
    for row in load_table(path):
        action = resolve_action(row, options, types.get(row.keyword))
        g, _, e = row.tag.strip("()").partition(",")
        if row.tag.startswith("(GGGG"):
            private = action
        elif g == "50XX":
            curve = action
        elif g.endswith("XX"):
            by_masked[int(g[:2] + "00" + e, 16)] = action
        else:
            by_tag[int(g + e, 16)] = action
    return ActionMap(by_tag, by_masked, curve, private)


# --------------------------------------------------------------------------- value transforms
def remap_uid(uid: str, salt: str) -> str:
    """Consistent replacement UID: ``2.25.<int>`` of an HMAC of ``uid`` keyed by ``salt``.

    The 128-bit digest carries UUID version-8/variant bits (RFC 9562), as 2.25 requires.

    Raises:
        ValueError: ``salt`` is empty.
    """
    uid = str(uid).strip().rstrip("\0")
    if not salt:
        raise ValueError("an empty salt would make UIDs reversible by dictionary attack")
    if not uid:
        return ""
    d = bytearray(hmac.new(salt.encode(), b"uid\x00" + uid.encode(), hashlib.sha256).digest()[:16])
    d[6] = (d[6] & 0x0F) | 0x80
    d[8] = (d[8] & 0x3F) | 0x80
    return "2.25." + str(int.from_bytes(d, "big"))


def shift_date(value: str, days: int) -> str:
    """Shift a DA value by ``days``; a partial or invalid date becomes empty (cannot be shifted)."""
    v = str(value).strip()
    try:
        d = dt.datetime.strptime(v, "%Y%m%d").date() if len(v) == 8 else None
    except ValueError:
        d = None
    return (d + dt.timedelta(days=days)).strftime("%Y%m%d") if d else ""


def _shift_datetime(value: str, days: int) -> str:
    """Shift the date part of a DT value; the time and UTC offset are kept."""
    v = str(value).strip()
    head = shift_date(v[:8], days)
    return head + v[8:] if head else ""


# --------------------------------------------------------------------------- dataset walk
@dataclass
class ActionContext:
    """What :func:`clean_dataset` needs besides the dataset: actions, salt, shift, PHI terms."""

    actions: ActionMap
    salt: str
    shift_days: int
    phi: re.Pattern | None                    # phi_terms_of(ds)[0]: the dataset's own identifiers
    # Retain Safe Private allowlist: (group, private creator, element offset 0x00-0xFF). Empty by
    # default: a private element is kept only when its creator and offset are listed.
    safe_private: frozenset[tuple[int, str, int]] = frozenset()
    dotted: frozenset[str] = frozenset()     # phi_terms_of(ds)[1]: its UIDs and dotted dates


def _fallback_action(elem: DataElement) -> str:
    """Action for an attribute Table E.1-1 does not list (a safety net, docs/deid.md)."""
    group, element = elem.tag.group, elem.tag.element
    if element == 0x0000 or elem.VR == "UN" or group == 0x0010:
        return "X"   # stale group lengths; unknown content; unlisted Patient-module attributes
    if elem.VR == "PN":
        return "Z"
    if elem.VR in ("DA", "DT"):
        return "C"
    if elem.VR == "UI":
        values = elem.value if elem.VM > 1 else [elem.value]
        standard = all(str(v).startswith(_STANDARD_UID_ROOT) for v in values if v)
        return "K" if standard or elem.keyword.endswith("ClassUID") else "U"
    return "K"


def _values(elem: DataElement) -> list:
    return list(elem.value) if elem.VM > 1 else [elem.value]


def _with_values(elem: DataElement, values: list) -> DataElement:
    values = [v for v in values if v != ""] if elem.VM > 1 else values
    return DataElement(elem.tag, elem.VR, values if len(values) > 1 else (values[0] if values else ""))


def _apply(elem: DataElement, action: str, ctx: ActionContext) -> DataElement | None:
    vr = elem.VR
    if action == "X":
        return None
    if vr == "SQ":   # every kept sequence is cleaned item by item: nested PHI is removed too
        items = [] if action == "Z" else [clean_dataset(item, ctx) for item in elem.value]
        return DataElement(elem.tag, "SQ", Sequence(items))
    if elem.is_empty:
        return copy.copy(elem)
    if action == "K":   # kept verbatim, but never with the dataset's own identifiers in its text
        return _scrub_kept(elem, ctx)
    if action == "Z":
        return DataElement(elem.tag, vr, "" if vr in _TEXT_VRS else None)
    if action == "U" or (action == "D" and vr == "UI"):
        return _with_values(elem, [remap_uid(v, ctx.salt) for v in _values(elem)]) if vr == "UI" else None
    if action == "D":
        if vr in _TEXT_VRS:
            return DataElement(elem.tag, vr, _DUMMY_BY_VR.get(vr, DUMMY_TEXT))
        return DataElement(elem.tag, vr, None)
    # action == "C"
    if vr == "DA":
        return _with_values(elem, [shift_date(v, ctx.shift_days) for v in _values(elem)])
    if vr == "DT":
        return _with_values(elem, [_shift_datetime(v, ctx.shift_days) for v in _values(elem)])
    if vr in ("LO", "SH", "ST", "LT", "UT", "UC", "CS"):
        return _with_values(elem, [clean_text(str(v), ctx.phi, ctx.dotted) for v in _values(elem)])
    if vr == "PN":
        return DataElement(elem.tag, vr, "")
    return copy.copy(elem)   # TM, numbers: times are kept under Modified Dates


# Text VRs whose kept values are scrubbed of the dataset's own identifiers. CS only where it is free
# text (BodyPartExamined, private CS): coded values (ImageType, ScanOptions …) are left alone.
_SCRUBBED_VRS = frozenset({"SH", "LO", "ST", "LT", "UT", "UC", "PN", "AE"})
_FREE_TEXT_CS = frozenset({"BodyPartExamined"})


def _scrub_kept(elem: DataElement, ctx: ActionContext) -> DataElement:
    """A kept element, its text scrubbed by :func:`scrub_text` (UIDs, numbers, dates untouched)."""
    vr = elem.VR
    phi, dotted = ctx.phi, ctx.dotted
    if (phi is None and not dotted) or elem.keyword in _PHI_KEYWORDS or elem.keyword in phi_terms.KIND_BY_KEYWORD:
        return copy.copy(elem)   # an identifying attribute kept on purpose (Retain Device Identity …)
    if vr in _SCRUBBED_VRS or (vr == "CS" and (elem.tag.is_private or elem.keyword in _FREE_TEXT_CS)):
        values = _values(elem)
        new = [scrub_text(str(v), phi, dotted) if v is not None else v for v in values]
        return copy.copy(elem) if new == [str(v) if v is not None else v for v in values] \
            else _with_values(elem, new)
    if vr in ("UN", "OB") and elem.tag.is_private and isinstance(elem.value, bytes):
        # a kept private element read without its VR (implicit VR file): scrub it when it is text
        text = elem.value.decode("latin-1")
        if text.strip("\0 ").isprintable():
            new = scrub_text(text.rstrip("\0 "), phi, dotted)
            if new != text.rstrip("\0 "):
                raw = new.encode("latin-1")
                return DataElement(elem.tag, vr, raw + b" " * (len(raw) % 2))
    return copy.copy(elem)


def clean_dataset(ds: Dataset, ctx: ActionContext) -> Dataset:
    """A new dataset with every element of ``ds`` transformed by its action (``ds`` untouched)."""
    out = Dataset()
    keep_private = _safe_private_tags(ds, ctx.safe_private) if ctx.safe_private else set()
    for elem in ds:
        action = "K" if int(elem.tag) in keep_private else ctx.actions.action_for(int(elem.tag))
        new = _apply(elem, action if action is not None else _fallback_action(elem), ctx)
        if new is not None:
            new.is_undefined_length = elem.is_undefined_length   # encapsulated pixel data
            out.add(new)
    return out


def _safe_private_tags(ds: Dataset, allow: frozenset[tuple[int, str, int]]) -> set[int]:
    """Tags of ``ds``'s allowlisted private elements and of their creator elements.

    Blocks are matched by creator string, not by block number: (0029,10xx) in one file may be
    (0029,11xx) in another.
    """
    creators = {(e.tag.group, e.tag.element): str(e.value).strip() for e in ds
                if e.tag.is_private and 0x10 <= e.tag.element <= 0xFF}
    keep = set()
    for e in ds:
        g, el = e.tag.group, e.tag.element
        if e.tag.is_private and el >= 0x1000:
            creator = creators.get((g, el >> 8))
            if creator is not None and (g, creator, el & 0xFF) in allow:
                keep.update({int(e.tag), (g << 16) | (el >> 8)})
    return keep

