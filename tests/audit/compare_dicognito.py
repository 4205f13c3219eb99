"""Regenerate the table of docs/deid-vs-dicognito.md (not part of `make test`; needs dicognito).

    python -m tests.audit.compare_dicognito OUT   # OUT: a curated output (its restricted/staging)

Runs dicognito 0.19.0 and tasks.curation.deid.deidentify over the first source file of every series of 3 exams and
prints, per attribute (keyword, or tag for private ones), what each tool does: kept / removed /
emptied / replaced / dummy / shifted (dates) / remapped (UIDs). Values are never printed.
"""
from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pydicom
from dicognito.anonymizer import Anonymizer

from mrifoundry.tasks.curation.deid.deidentify import DeidConfig, PseudonymStore, deidentify_dataset


def _what(orig, new) -> str:
    if new is None:
        return "removed"
    if new.is_empty:
        return "kept (empty)" if orig.is_empty else "emptied"
    if new.value == orig.value:
        return "kept"
    if orig.VR == "UI":
        return "remapped"
    if orig.VR in ("DA", "DT"):
        return "shifted"
    return "replaced"


def _name(elem) -> str:
    return elem.keyword or f"({elem.tag.group:04X},xx{elem.tag.element & 0xFF:02X}) private"


def compare(out: Path, n_exams: int = 3) -> dict[str, set[tuple[str, str]]]:
    rows: dict[str, set[tuple[str, str]]] = defaultdict(set)
    store = PseudonymStore(Path(tempfile.mkdtemp()) / "p.sqlite", "compare-salt")
    anonymizer = Anonymizer(seed="compare-seed")
    for retrieve in sorted((out / "restricted" / "staging").glob("*/retrieve.json"))[:n_exams]:
        files = json.loads(retrieve.read_text())["files"]
        firsts = {}
        for f in files:
            hdr = pydicom.dcmread(f, stop_before_pixels=True)
            firsts.setdefault(str(hdr.SeriesInstanceUID), f)
        for f in firsts.values():
            orig = pydicom.dcmread(f)
            ours = deidentify_dataset(orig, DeidConfig("compare-salt"), store, "e0")
            theirs = pydicom.dcmread(f)
            anonymizer.anonymize(theirs)
            for elem in orig:
                if elem.keyword == "PixelData":
                    continue
                rows[_name(elem)].add((_what(elem, ours.get(elem.tag)), _what(elem, theirs.get(elem.tag))))
            for elem in ours:
                if elem.tag not in orig:
                    rows[_name(elem)].add(("added", "added" if elem.tag in theirs else "absent"))
            for elem in theirs:
                if elem.tag not in orig and elem.tag not in ours:
                    rows[_name(elem)].add(("absent", "added"))
    return rows


if __name__ == "__main__":
    result = compare(Path(sys.argv[1]))
    print("| attribute | mrifoundry | dicognito |\n|---|---|---|")
    for name, pairs in sorted(result.items()):
        for a, b in sorted(pairs):
            print(f"| {name} | {a} | {b} |{'' if a != b else ' same'}")
