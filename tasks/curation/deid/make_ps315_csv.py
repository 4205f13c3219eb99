"""Convert innolitics/dicom-standard ``confidentiality_profile_attributes.json`` to our CSV.

Usage::

    python tasks/curation/deid/make_ps315_csv.py confidentiality_profile_attributes.json \
        tasks/curation/deid/ps315_basic_profile.csv

The JSON is the standard's PS3.15 Table E.1-1 in machine-readable form; see docs/deid.md
for the version shipped. Keywords come from pydicom's data dictionary (empty for ranges
such as ``(50XX,XXXX)`` and the private-attributes row). Run offline; no network.
"""
from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

# CSV column -> key in the innolitics JSON
OPTION_KEYS = {
    "retain_safe_private": "rtnSafePrivOpt",
    "retain_uids": "rtnUIDsOpt",
    "retain_device_identity": "rtnDevIdOpt",
    "retain_institution_identity": "rtnInstIdOpt",
    "retain_patient_characteristics": "rtnPatCharsOpt",
    "retain_long_full_dates": "rtnLongFullDatesOpt",
    "retain_long_modified_dates": "rtnLongModifDatesOpt",
    "clean_descriptors": "cleanDescOpt",
    "clean_structured_content": "cleanStructContOpt",
    "clean_graphics": "cleanGraphOpt",
}
COLUMNS = ["tag", "keyword", "name", "basic_profile", *OPTION_KEYS]


def keyword_for(tag: str) -> str:
    """pydicom keyword of ``(GGGG,EEEE)``; repeating groups ``60XX`` resolve via group 6000."""
    from pydicom.datadict import keyword_for_tag

    m = re.fullmatch(r"\(([0-9A-F]{2})(XX|[0-9A-F]{2}),([0-9A-F]{4})\)", tag.upper())
    if not m:
        return ""  # (50XX,XXXX), private attributes: no single keyword
    group = m.group(1) + ("00" if m.group(2) == "XX" else m.group(2))
    return keyword_for_tag(int(group + m.group(3), 16)) or ""


def convert_rows(rows: list[dict]) -> list[dict]:
    """innolitics JSON rows -> CSV rows (sorted by tag, names whitespace-normalised)."""
    out = []
    for r in rows:
        row = {
            "tag": r["tag"].upper(),
            "keyword": keyword_for(r["tag"]),
            "name": " ".join(r["name"].split()),
            "basic_profile": r["basicProfile"],
        }
        row.update({col: r.get(key, "") for col, key in OPTION_KEYS.items()})
        out.append(row)
    return sorted(out, key=lambda row: row["tag"])


def main(argv: list[str]) -> int:
    src, dst = Path(argv[1]), Path(argv[2])
    rows = convert_rows(json.loads(src.read_text()))
    with dst.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} rows -> {dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
