"""Stage 1: filter the radiology report export.

Keeps MR reports inside a date window, derives the protocol from the report type and
excludes protocols that show facial anatomy by configurable rules (Duke-110K). The
result holds PHI and is written to the restricted zone only; callers get counts.
"""
from __future__ import annotations

import csv
import datetime as dt
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from mrifoundry.settings import PACKAGED_RULES

REPORT_COLUMNS = ("accession_number", "patient_mrn", "report_date", "modality", "report_type")


@dataclass(frozen=True)
class ReportRules:
    modalities: tuple[str, ...]
    require_report_type: re.Pattern | None
    exclude: dict[str, re.Pattern]
    body_parts: dict[str, re.Pattern]
    date_start: dt.date | None = None
    date_end: dt.date | None = None

    @classmethod
    def load(cls, path: Path | None = None, date_start: dt.date | None = None,
             date_end: dt.date | None = None) -> "ReportRules":
        """Read the rules YAML (default: the packaged Duke-110K rules)."""
        raw = yaml.safe_load(Path(path or PACKAGED_RULES).read_text())
        comp = lambda p: re.compile(p, re.IGNORECASE)  # noqa: E731
        req = raw.get("require_report_type")
        return cls(
            modalities=tuple(m.upper() for m in raw.get("modalities", ["MR"])),
            require_report_type=comp(req) if req else None,
            exclude={k: comp(v) for k, v in (raw.get("exclude") or {}).items()},
            body_parts={k: comp(v) for k, v in (raw.get("body_parts") or {}).items()},
            date_start=date_start, date_end=date_end,
        )


def normalise_protocol(report_type: str) -> str:
    """Upper case, single spaces, no trailing punctuation: 'MRI LEFT SHOULDER WITHOUT CONTRAST'."""
    return re.sub(r"\s+", " ", report_type or "").strip().strip(".,;").strip().upper()


def body_part_of(protocol: str, rules: ReportRules) -> str | None:
    for part, pat in rules.body_parts.items():
        if pat.search(protocol):
            return part
    return None


def _parse_date(s: str) -> dt.date | None:
    s = (s or "").strip()
    for fmt in ("%Y-%m-%d", "%Y%m%d", "%m/%d/%Y"):
        try:
            return dt.datetime.strptime(s[:10] if fmt == "%Y-%m-%d" else s, fmt).date()
        except ValueError:
            continue
    return None


@dataclass
class FilterResult:
    rows: list[dict]                       # every report with its decision (PHI: restricted zone only)
    counts: dict[str, int] = field(default_factory=dict)   # decision → n (safe to log)

    @property
    def kept(self) -> list[dict]:
        return [r for r in self.rows if r["decision"] == "kept"]


def filter_reports(path: Path, rules: ReportRules) -> FilterResult:
    """Apply the rules to every report of the export.

    Decisions: kept, not_mr, outside_window, excluded_protocol (``rule`` names the rule),
    duplicate (second report of one accession), unparseable (no accession or date).

    Raises:
        ValueError: the CSV lacks a required column (names the missing columns, no values).
    """
    rows: list[dict] = []
    seen: set[str] = set()
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in REPORT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"report export lacks columns {missing}")
        for rec in reader:
            acc = (rec.get("accession_number") or "").strip()
            date = _parse_date(rec.get("report_date", ""))
            protocol = normalise_protocol(rec.get("report_type", ""))
            row = dict(accession_number=acc, patient_mrn=(rec.get("patient_mrn") or "").strip(),
                       report_date=date, modality=(rec.get("modality") or "").strip().upper(),
                       report_type=rec.get("report_type"), protocol=protocol,
                       body_part=body_part_of(protocol, rules), decision="kept", rule=None,
                       sampled=False, exam_id=None)
            if not acc or date is None or not row["patient_mrn"]:
                row["decision"] = "unparseable"
            elif acc in seen:
                row["decision"] = "duplicate"
            elif row["modality"] not in rules.modalities or (
                    rules.require_report_type is not None and not rules.require_report_type.search(protocol)):
                row["decision"] = "not_mr"
            elif (rules.date_start and date < rules.date_start) or (rules.date_end and date > rules.date_end):
                row["decision"] = "outside_window"
            else:
                for name, pat in rules.exclude.items():
                    if pat.search(protocol):
                        row["decision"], row["rule"] = "excluded_protocol", name
                        break
            if acc:
                seen.add(acc)
            rows.append(row)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["decision"]] = counts.get(r["decision"], 0) + 1
    return FilterResult(rows=rows, counts=counts)
