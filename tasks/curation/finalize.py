"""End of a curation run: merge catalog parts, export the ledger, rebuild views, QC, summary."""
from __future__ import annotations

from pathlib import Path

from mrifoundry.catalog.schema import EXAMS, SERIES, SERIES_QUALITY, SLICES, STAGE_RESULTS
from mrifoundry.catalog.store import consolidate, write_table
from mrifoundry.catalog.views import build_research_db, build_restricted_db, connect
from mrifoundry.catalog.reasons import describe
from mrifoundry.tasks.curation.qc import qc_montage
from mrifoundry.tasks.curation.workspace import Workspace


def finalize_catalog(ws: Workspace) -> dict[str, int]:
    """Consolidate the tables and rebuild the DuckDB views; returns row counts per table."""
    counts = {t.name: consolidate(ws.research, t) for t in (EXAMS, SERIES, SLICES, SERIES_QUALITY)}
    ledger = ws.ledger.to_arrow()
    write_table(ws.research, STAGE_RESULTS, ledger)
    counts[STAGE_RESULTS.name] = ledger.num_rows
    build_research_db(ws.research)
    if (ws.restricted / "reports" / "reports.parquet").exists():
        build_restricted_db(ws.restricted)
    return counts


def run_summary(ws: Workspace, selection_counts: dict[str, int], table_counts: dict[str, int],
                run_outcomes: dict[str, dict[str, int]], qc_per_body_part: int = 8) -> tuple[str, Path | None]:
    """Markdown summary (counts per stage, rejections by reason, catalog sizes) and the QC montage."""
    db = ws.research / "catalog" / "catalog.duckdb"
    montage = qc_montage(db, ws.research / "qc" / "montage.png", per_body_part=qc_per_body_part)
    con = connect(ws.research)
    try:
        rej = con.execute("SELECT stage, reason, item_kind, n FROM rejections ORDER BY stage, n DESC").fetchall()
        by_part = con.execute(
            "SELECT coalesce(body_part,'unknown'), COUNT(DISTINCT exam_id), COUNT(*) FROM training_slices "
            "GROUP BY 1 ORDER BY 1").fetchall()
    finally:
        con.close()
    lines = ["# Curation run", "", "## Selection", "", "| step | n |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in selection_counts.items()]
    lines += ["", "## This run, per stage", "", "| stage | done | rejected | failed | skipped |", "|---|---|---|---|---|"]
    for stage, c in run_outcomes.items():
        lines.append(f"| {stage} | {c.get('done', 0)} | {c.get('rejected', 0)} | {c.get('failed', 0)} | "
                     f"{c.get('skipped', 0)} |")
    lines += ["", "## Rejections and failures in the ledger (all runs)", "",
              "| stage | reason | item | n | meaning |", "|---|---|---|---|---|"]
    lines += [f"| {s} | `{r}` | {k} | {n} | {describe(r) if r else ''} |" for s, r, k, n in rej]
    lines += ["", "## Catalog", "", "| table | rows |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in table_counts.items()]
    lines += ["", "| body part | exams | slices |", "|---|---|---|"]
    lines += [f"| {p} | {e} | {s} |" for p, e, s in by_part]
    if montage:
        lines += ["", f"QC montage: [{montage.resolve()}](file://{montage.resolve()})"]
    md = "\n".join(lines) + "\n"
    (ws.research / "qc").mkdir(parents=True, exist_ok=True)
    (ws.research / "qc" / "summary.md").write_text(md)
    return md, montage


__all__ = ["finalize_catalog", "run_summary"]
