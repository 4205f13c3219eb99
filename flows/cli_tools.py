"""The command's tool verbs (no pipeline, no flow): sql, overlap, export-bids, sample, phi-audit,
catalog-docs, where, review. Each takes its params model and returns the exit code."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from mrifoundry.params import (
    CatalogDocsParams, ExportBidsParams, OverlapParams, PhiAuditParams, ReviewParams, SampleParams, SqlParams,
)
from mrifoundry.settings import expand_home, research_dir

_UNRESTRICTED_HINT = "use --unrestricted to lift this (power users; it can read the restricted zone)"


def sql(p: SqlParams) -> int:
    import duckdb

    from mrifoundry.catalog.views import RefusedStatement, check_read_query, connect, connect_confined
    from mrifoundry.errors import UsageError
    research = research_dir(p.out)
    con = connect(research) if p.unrestricted else connect_confined(research)
    try:
        if not p.unrestricted:
            check_read_query(con, p.query)
        cur = con.execute(p.query)
        cols = [d[0] for d in cur.description] if cur.description else []
        rows = cur.fetchall()
    except (RefusedStatement, duckdb.Error) as e:
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
        if isinstance(e, RefusedStatement):
            raise UsageError(f"{first}; {_UNRESTRICTED_HINT}") from e
        if not p.unrestricted and (isinstance(e, duckdb.PermissionException) or "configuration has been locked" in first):
            raise UsageError(f"{first} (the research SQL entry point reads only {research}/); "
                             f"{_UNRESTRICTED_HINT}") from e
        raise UsageError(first) from e
    finally:
        con.close()
    _print_rows(cols, rows, p.format)
    return 0


def _print_rows(cols: list[str], rows: list[tuple], fmt: str) -> None:
    if fmt == "csv":
        import csv
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    elif fmt == "json":
        print(json.dumps([dict(zip(cols, r)) for r in rows], default=str, indent=1))
    else:
        widths = [max([len(str(c))] + [len(str(r[i])) for r in rows]) for i, c in enumerate(cols)]
        print(" | ".join(str(c).ljust(w) for c, w in zip(cols, widths)))
        print("-+-".join("-" * w for w in widths))
        for r in rows:
            print(" | ".join(str(v).ljust(w) for v, w in zip(r, widths)))
        print(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")


def overlap(p: OverlapParams) -> int:
    from mrifoundry.tasks.ingest.labelled3d.overlap import exclude_overlap, overlap as find_overlap
    res = find_overlap(research_dir(p.out), p.query, p.dataset_id)
    if p.sql:
        res["exclude_sql"] = exclude_overlap(p.query, p.dataset_id)
    print(json.dumps(res, indent=1))
    return 0


def export_bids(p: ExportBidsParams) -> int:
    from mrifoundry.tasks.data.bids_export import export_bids as export, validate_bids
    res = export(research_dir(p.out), p.query, Path(expand_home(p.dest)), name=p.name)
    if p.check:
        res["validator"] = validate_bids(Path(expand_home(p.dest)))
    print(json.dumps(res, indent=1))
    return 1 if p.check and res["validator"]["errors"] else 0


def sample(p: SampleParams) -> int:
    from mrifoundry.sample import generate_sample
    from mrifoundry.settings import Settings
    out = Path(expand_home(p.out)) if p.out else Settings().sample_dir
    if (out / "manifest.json").exists() and not p.force:
        m = json.loads((out / "manifest.json").read_text())
        print(f"sample archive already at {out} (seed {m['seed']}); --force regenerates it")
    else:
        if p.force and out.exists():
            import shutil
            shutil.rmtree(out)
        m = generate_sample(out, seed=p.seed)
        print(f"sample archive written to {out}")
    print(json.dumps(m.get("counts", {}), indent=1))
    return 0


def phi_audit(p: PhiAuditParams) -> int:
    from mrifoundry.tasks.curation.audit.phi_audit import audit_output
    rep = audit_output(Path(expand_home(p.out)), Path(expand_home(p.reports)) if p.reports else None)
    print(rep.to_markdown())
    return 0 if rep.ok else 1


def catalog_docs(p: CatalogDocsParams) -> int:
    from mrifoundry.catalog.docs import render_catalog_doc
    text, path = render_catalog_doc(), Path(p.path)
    if p.check:
        if (path.read_text() if path.exists() else "") != text:
            print(f"{path} is out of date: run `mrifoundry catalog-docs`", file=sys.stderr)
            return 1
        return 0
    path.write_text(text)
    return 0


def review(p: ReviewParams) -> int:
    from mrifoundry.catalog.views import connect
    from mrifoundry.errors import UsageError
    from mrifoundry.tasks.curation.review.decisions import import_decisions
    from mrifoundry.tasks.curation.review.page import build_review_page
    research = research_dir(p.out)
    if p.action == "import":
        if not p.file:
            raise UsageError("review import needs the exported file: mrifoundry review import FILE --out OUT")
        res = import_decisions(research, Path(expand_home(p.file)), rater=p.rater)
        con = connect(research)
        try:
            n_out = con.execute("SELECT count(*) FROM series_decisions WHERE decision = 'exclude'").fetchone()[0]
        finally:
            con.close()
        print(f"imported {res.decisions} decision(s) ({res.excluded} exclude) by {', '.join(res.raters) or '-'}; "
              f"{n_out} series excluded from training_slices and training_volumes")
    if p.action == "build":   # a catalog curated before the metrics existed gets them now
        from mrifoundry.tasks.curation.quality.backfill import backfill_quality
        res = backfill_quality(research)
        if res["missing"]:
            print(f"quality metrics: {res['measured']} of {res['missing']} converted series measured")
    page = build_review_page(research, max_volumes=p.volumes)
    print(f"review page: {page['page']} ({page['series']} series, {page['volumes']} with a 3D view)")
    return 0


def where(p) -> int:
    from importlib.resources import files

    from mrifoundry.settings import PACKAGED_RULES, Settings
    s = Settings()
    print(json.dumps({"home": str(s.home), "out": str(s.out or s.home / "out"), "sample": str(s.sample_dir),
                      "rules": str(PACKAGED_RULES), "deploy": str(files("mrifoundry.deploy"))}, indent=1))
    return 0
