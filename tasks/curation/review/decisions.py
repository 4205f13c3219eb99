"""Review decisions exported by the QC page (JSON or CSV, static/app.js) into the catalog table
review_decisions (catalog/schema_quality.py).

An import appends; the key (series, rater, decided_at) makes importing the same file twice a
no-op. Unknown series ids, unknown decisions and rows without a rater are refused as a whole
file (one line naming the first bad row): a half-imported export is worse than none.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from mrifoundry.catalog.schema import REVIEW_DECISIONS
from mrifoundry.catalog.store import derived_lock, ensure_derived_tables, upsert
from mrifoundry.catalog.views import connect
from mrifoundry.errors import UsageError

__all__ = ["DECISIONS", "ImportResult", "import_decisions", "read_export"]

DECISIONS = ("include", "exclude", "unsure")
NOTE_MAX = 500


@dataclass(frozen=True)
class ImportResult:
    file: str
    decisions: int
    excluded: int
    raters: tuple[str, ...]


def _when(text: str, where: str) -> dt.datetime:
    try:
        t = dt.datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"{where}: decided_at {text!r} is not an ISO date-time") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def read_export(path: Path) -> tuple[list[dict], str | None]:
    """(rows with series_id, decision, note, rater, decided_at; the page's run id) of an export file."""
    text = Path(path).read_text(encoding="utf-8-sig")
    if Path(path).suffix.lower() == ".json" or text.lstrip().startswith("{"):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise UsageError(f"{path}: not JSON ({e.msg} at line {e.lineno})") from None
        if not isinstance(doc, dict) or doc.get("format") != "mrifoundry-review/1":
            raise UsageError(f"{path}: not a review export (format mrifoundry-review/1)")
        rows = [dict(d, rater=d.get("rater") or doc.get("rater")) for d in doc.get("decisions", [])]
        return rows, doc.get("run_id")
    reader = csv.DictReader(text.splitlines())
    need = {"series_id", "decision", "note", "rater", "decided_at"}
    if not need <= set(reader.fieldnames or ()):
        raise UsageError(f"{path}: a review CSV needs the columns {', '.join(sorted(need))}")
    return list(reader), None


def import_decisions(research: Path, path: Path, rater: str | None = None) -> ImportResult:
    """Check every row of the export ``path`` against the catalog, then append them all.

    Raises:
        UsageError: an unreadable file or a bad row (named), nothing imported.
    """
    rows, run_id = read_export(path)
    con = connect(research)
    try:
        known = {r[0] for r in con.execute("SELECT series_id FROM series").fetchall()}
    finally:
        con.close()
    now = dt.datetime.now(dt.timezone.utc)
    out = []
    for i, r in enumerate(rows, 1):
        where = f"{Path(path).name} row {i}"
        sid, decision = str(r.get("series_id") or ""), str(r.get("decision") or "").lower()
        if sid not in known:
            raise UsageError(f"{where}: series {sid!r} is not in this catalog (another run's export?)")
        if decision not in DECISIONS:
            raise UsageError(f"{where}: decision {decision!r} is not one of {', '.join(DECISIONS)}")
        who = (rater or r.get("rater") or "").strip()
        if not who:
            raise UsageError(f"{where}: no rater (give --rater)")
        out.append({"series_id": sid, "decision": decision, "note": str(r.get("note") or "")[:NOTE_MAX],
                    "rater": who, "decided_at": _when(r.get("decided_at") or now.isoformat(), where),
                    "imported_at": now, "source_file": Path(path).name, "run_id": run_id})
    ensure_derived_tables(research)
    with derived_lock(research):
        upsert(research, REVIEW_DECISIONS, out)
    return ImportResult(file=str(path), decisions=len(out), excluded=sum(d["decision"] == "exclude" for d in out),
                        raters=tuple(sorted({d["rater"] for d in out})))
