"""PHI fails closed: what the final audit found in the research zone leaves it.

:func:`quarantine_leaks` takes an :class:`~tasks.curation.audit.phi_audit.AuditReport` that is not
``ok`` and, for every exam with a hit in one of its research-zone files (or in its catalog rows),
moves the exam's research outputs — ``dicom/<exam>``, ``png/<exam>``, ``nifti/<exam>``,
``work/<exam>`` and its catalog rows — to ``OUT/restricted/quarantine/<same path under research/>``,
records ``(exam, "audit", "rejected", "phi_quarantined")`` in the ledger (a re-run does not redo a
rejected exam: a person looks first), rebuilds the catalog without it and audits the research zone
again. A leaking research file that belongs to no exam moves on its own. Places that cannot move
(the ledger, Prefect's database, logs, the catalog files themselves, which are rebuilt) are named
in the result. Nothing here prints or logs a value: places, kinds and opaque exam ids only.
"""
from __future__ import annotations

import datetime as dt
import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import pyarrow.parquet as pq

from mrifoundry.atomic import write_text

__all__ = ["QuarantineResult", "audit_research", "quarantine_leaks", "write_report"]

#: research folders that hold one sub-folder per exam (Workspace.dicom_dir, png_dir, nifti_path, work)
EXAM_DIRS = ("dicom", "png", "nifti", "work")
#: catalog tables with one row set per exam (their consolidated files are rewritten without the exam)
_EXAM_TABLES = ("exams", "series", "slices")
REDACTED = "<redacted>"


@dataclass
class QuarantineResult:
    """What :func:`quarantine_leaks` did. Paths are relative to ``OUT/research`` (moved) or to OUT
    (places); exam ids are the opaque research ids."""

    destination: Path                                        # OUT/restricted/quarantine
    exams: list[str] = field(default_factory=list)           # exams quarantined by this call
    already: list[str] = field(default_factory=list)         # exams with hits that were quarantined before
    moved: list[str] = field(default_factory=list)           # research-relative paths moved
    rows_dropped: dict[str, int] = field(default_factory=dict)   # catalog table -> rows removed
    not_moved: list[str] = field(default_factory=list)       # places with hits that cannot move
    rebuilt: list[str] = field(default_factory=list)         # catalog files with hits: rebuilt, not moved
    after: object | None = None                              # AuditReport of the research zone afterwards

    @property
    def changed(self) -> bool:
        return bool(self.exams or self.moved)

    def to_markdown(self) -> str:
        """The quarantine as Markdown: opaque exam ids, paths and counts; no identifier values."""
        lines = ["## Quarantine", "",
                 f"{len(self.exams)} exam(s) quarantined now, {len(self.already)} before; "
                 f"{len(self.moved)} research path(s) moved to `restricted/quarantine/`.", ""]
        if self.exams:
            lines += ["Exams (ledger: stage `audit`, `rejected`, `phi_quarantined`): "
                      + ", ".join(f"`{e}`" for e in self.exams), ""]
        if self.moved:
            lines += ["| moved (under research/) |", "|---|"] + [f"| {p} |" for p in self.moved] + [""]
        if any(self.rows_dropped.values()):
            lines += ["Catalog rows dropped (kept under `restricted/quarantine/catalog/`): "
                      + ", ".join(f"{t} {n}" for t, n in sorted(self.rows_dropped.items())), ""]
        if self.rebuilt:
            lines += ["Catalog files with hits, rebuilt from the remaining exams (the re-audit below says "
                      "whether they are clean): " + ", ".join(f"`{p}`" for p in self.rebuilt), ""]
        if self.not_moved:
            lines += ["Places that cannot be moved (outside the research zone, or a research file whose "
                      "name is an identifier outside any exam): fix or delete them by hand.", "",
                      "| place |", "|---|"] + [f"| {p} |" for p in self.not_moved] + [""]
        if self.after is not None:
            state = "**clean**" if self.after.ok else (
                f"**still {len(self.after.hits)} hit(s), {len(self.after.errors)} unreadable place(s)**")
            lines += ["## Research zone after quarantine", "", f"Re-audit of `research/`: {state}.", ""]
            if not self.after.ok:
                lines += ["| place | location | kind |", "|---|---|---|"]
                lines += [f"| {h.place} | {h.location} | {h.kind} |" for h in self.after.hits]
                lines += [f"| {p} | unreadable | {e} |" for p, e in self.after.errors] + [""]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- moving
def _move(src: Path, dst: Path) -> None:
    """Move a file or folder (``os.replace``; ``shutil.move`` across devices). An existing folder at
    ``dst`` (an exam quarantined before and curated again) is merged, its files replaced."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir() and dst.is_dir():
        for child in sorted(src.iterdir()):
            _move(child, dst / child.name)
        src.rmdir()
        return
    if dst.is_dir():
        shutil.rmtree(dst)
    try:
        os.replace(src, dst)
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
        shutil.move(str(src), str(dst))


def _exam_ids_on_disk(research: Path) -> set[str]:
    """Exam ids that have research outputs (folders under EXAM_DIRS) or catalog rows."""
    found = {p.name for d in EXAM_DIRS if (research / d).is_dir() for p in (research / d).iterdir()}
    for table in _EXAM_TABLES:
        parts = research / "catalog" / "_parts" / table
        if parts.is_dir():
            found |= {p.stem for p in parts.glob("*.parquet")}
        merged = research / "catalog" / table / f"{table}.parquet"
        if merged.exists():
            try:
                found |= set(pq.read_table(merged, columns=["exam_id"]).column("exam_id").to_pylist())
            except Exception:  # noqa: BLE001 - an unreadable table is named by the audit itself
                pass
    return {e for e in found if e and not e.startswith(".")}


def _exam_of(rel: PurePosixPath, known: set[str]) -> str | None:
    """The exam a research-relative path belongs to: ``<EXAM_DIRS>/<exam>/…``, a catalog part
    ``catalog/_parts/<table>/<exam>.parquet``, or any path with a known exam id as a component."""
    parts = rel.parts
    if len(parts) >= 3 and parts[0] in EXAM_DIRS and parts[1] != REDACTED:
        return parts[1]
    if len(parts) == 4 and parts[:2] == ("catalog", "_parts") and parts[3].endswith(".parquet"):
        return parts[3].removesuffix(".parquet")
    return next((p for p in parts if p in known), None)


def _exams_in_table_rows(path: Path, ids) -> set[str]:
    """Exams whose rows of a catalog table hold an identifier (the audit names only the column)."""
    tbl = pq.read_table(path)
    if "exam_id" not in tbl.column_names:
        return set()
    exams = tbl.column("exam_id").to_pylist()
    hit: set[str] = set()
    for name in tbl.column_names:
        for exam, value in zip(exams, tbl.column(name).to_pylist()):
            if value is not None and exam not in hit and ids.find(str(value)):
                hit.add(exam)
    return hit


def audit_research(out: Path, ids):
    """Audit ``OUT/research`` only (hits elsewhere — the ledger — are left out): the proof that
    the quarantine left the research zone clean."""
    from mrifoundry.tasks.curation.audit.phi_audit import audit
    rep = audit(out, ids)
    rep.hits = [h for h in rep.hits if h.place.startswith("research/")]
    rep.errors = [(p, e) for p, e in rep.errors if p.startswith("research/")]
    return rep


def quarantine_leaks(out: Path, report) -> QuarantineResult:
    """Move the research-zone outputs of every exam with a hit (or an unreadable file: an unaudited
    place is no pass) in ``report`` to ``OUT/restricted/quarantine/`` and drop its catalog rows,
    then rebuild the catalog and re-audit the research zone (``result.after``).

    Idempotent: a second call with the same report finds nothing left to move and changes nothing
    (no ledger row is written again, the catalog is not rebuilt).

    Raises:
        OSError: a move failed (what moved before stays moved; the audit still fails the run).
    """
    from mrifoundry.catalog.store import drop_exams
    from mrifoundry.tasks.curation.finalize import finalize_catalog
    from mrifoundry.tasks.curation.workspace import Workspace

    out = Path(out)
    ws = Workspace(out, "phi-audit")
    research, dest = ws.research, ws.restricted / "quarantine"
    res = QuarantineResult(destination=dest)
    places = sorted({h.place for h in report.hits} | {p for p, _ in report.errors})
    if not places:
        return res
    known = _exam_ids_on_disk(research)
    ids = getattr(report, "identifier_index", None)
    if ids is None:
        from mrifoundry.tasks.curation.audit.identifiers import collect_identifiers
        ids = collect_identifiers(out)
    exams: set[str] = set()
    loose: list[PurePosixPath] = []          # leaking research files of no exam: moved alone
    for place in places:
        path = PurePosixPath(place)
        if not path.parts or path.parts[0] != "research":
            res.not_moved.append(place)      # ledger, Prefect DB, logs, extra paths
            continue
        rel = PurePosixPath(*path.parts[1:])
        exam = _exam_of(rel, known)
        if exam is not None:
            exams.add(exam)
            if rel.parts[0] not in EXAM_DIRS and rel.parts[:2] != ("catalog", "_parts"):
                loose.append(rel)            # an exam's file elsewhere (a feature grid): moved as well
            continue
        if rel.parts and rel.parts[0] == "catalog":
            table = rel.parts[1] if len(rel.parts) == 3 and rel.parts[1] in _EXAM_TABLES else None
            if table and (research / rel).exists():
                try:
                    exams |= _exams_in_table_rows(research / rel, ids)
                except Exception:  # noqa: BLE001 - unreadable: named below, rebuilt from the parts
                    pass
            res.rebuilt.append(place)        # the catalog files themselves are rebuilt, not moved
            continue
        if REDACTED in rel.parts:
            res.not_moved.append(place)      # a file whose name is an identifier, outside any exam
            continue
        loose.append(rel)

    for exam in sorted(exams):
        moved_before = len(res.moved)
        for d in EXAM_DIRS:
            src = research / d / exam
            if src.exists():
                _move(src, dest / d / exam)
                res.moved.append(f"{d}/{exam}")
        for table, n in drop_exams(research, [exam], keep_dir=dest / "catalog").items():
            res.rows_dropped[table] = res.rows_dropped.get(table, 0) + n
            if n:
                res.moved.append(f"catalog/{table} ({exam}: {n} row(s))")
        row = ws.ledger.get(exam, "audit")
        if len(res.moved) > moved_before or row is None or row.reason != "phi_quarantined":
            ws.ledger.record(exam, "audit", "rejected", exam_id=exam, item_kind="exam", reason="phi_quarantined",
                             message=f"{len(res.moved) - moved_before} research path(s) moved to "
                                     "restricted/quarantine/ after the PHI audit")
            res.exams.append(exam)
        else:
            res.already.append(exam)
    for rel in loose:
        if (research / rel).exists():
            _move(research / rel, dest / rel)
            res.moved.append(str(rel))
    res.not_moved, res.rebuilt = sorted(set(res.not_moved)), sorted(set(res.rebuilt))
    if res.changed:
        finalize_catalog(ws)                 # merged tables, stage_results and views without the exams
    res.after = audit_research(out, ids)
    return res


def write_report(out: Path, report, quarantine: QuarantineResult | None = None, note: str = "") -> Path:
    """Write the audit (and quarantine, and ``note``) Markdown to
    ``OUT/restricted/quarantine/phi-audit-<UTC>.md`` (restricted: a person with access to the
    quarantine reads it). Returns its path."""
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
    path = Path(out) / "restricted" / "quarantine" / f"phi-audit-{stamp}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = report.to_markdown() + ("\n" + quarantine.to_markdown() if quarantine is not None else "")
    text += ("\n" + note) if note else ""
    return write_text(path, text)
