"""PHI audit vs curation on real vendor data (issue: the audit was ≈ 60 % of a run).

    python -m bench.audit_share [--json bench/results/audit_share.json]

Curates the real vendor cases with volumes (Siemens mosaics, Philips enhanced; docs/vendors.md)
as one archive with the plain stage functions, then times the audit. Reference in the same run:
the bytes the previous audit also tokenised (every research DICOM and PNG file whole, pixel
data and IDAT included), timed with the same tokeniser.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

CASES = ["siemens-mosaic-bold", "siemens-mosaic-dwi-mb", "siemens-mosaic-dwi-gz-filled",
         "philips-enhanced-mprage-gz-filled"]


TARGET_SHARE = 0.20   # the audit at most a fifth of a run's wall time on real vendor data


def run(work: Path, cases: list[str] = CASES) -> dict:
    from mrifoundry.params import CurateParams
    from bench.vendor_corpus import build
    from mrifoundry.tasks.curation.audit.identifiers import tokens
    from mrifoundry.tasks.curation.audit.phi_audit import audit_output
    from mrifoundry.tasks.curation.runner import run_curation

    built, missing = build(work / "archive", cases)
    out = work / "out"
    t0 = time.perf_counter()
    run_curation(CurateParams(archive=str(work / "archive"), reports=None, out=str(out), workers=1,
                              phi_audit=False))   # audited on its own below
    curate_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = audit_output(out, prefect_home=out / "no-prefect", log_dirs=[])
    audit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    n_bytes = 0
    for path in list((out / "research").rglob("*.dcm")) + list((out / "research").rglob("*.png")):
        data = path.read_bytes()
        n_bytes += len(data)
        tokens(data)
    pixel_tokenise_s = time.perf_counter() - t0
    return {"cases": sorted(built), "missing": missing, "curate_s": round(curate_s, 2), "audit_s": round(audit_s, 2),
            "audit_ok": rep.ok, "audit_share": round(audit_s / (curate_s + audit_s), 3),
            "previous_audit_s_estimate": round(audit_s + pixel_tokenise_s, 2),
            "previous_share_estimate": round((audit_s + pixel_tokenise_s) / (curate_s + audit_s + pixel_tokenise_s), 3),
            "whole_file_bytes_mb": round(n_bytes / 1e6, 1), "scanned": dict(rep.scanned)}


def section(cases: list[str] = CASES) -> dict:
    """The ``make bench`` section (bench/run.py)."""
    with tempfile.TemporaryDirectory() as tmp:
        r = run(Path(tmp), cases)
    share = r["audit_share"]
    return {
        "tables": [{
            "title": "PHI audit vs curation, real vendor cases (wall seconds, one process)",
            "headers": ["cases", "files audited", "curation", "audit", "audit share of the run",
                        "previous audit (estimate)", "its share", "audit result"],
            "rows": [[", ".join(r["cases"]), sum(r["scanned"].values()), r["curate_s"], r["audit_s"],
                      f"{100 * share:.1f} %", r["previous_audit_s_estimate"],
                      f"{100 * r['previous_share_estimate']:.1f} %", "pass" if r["audit_ok"] else "FAIL"]],
            "note": "Previous audit (estimate) = this audit + tokenising every research DICOM and PNG file whole "
                    "(pixel data and IDAT included), which the audit did before; a lower bound of its cost.",
        }],
        "targets": [{"name": "PHI audit share of a curation run (real vendor data)",
                     "target": f"≤ {100 * TARGET_SHARE:.0f} %", "measured": f"{100 * share:.1f} %",
                     "met": share <= TARGET_SHARE and r["audit_ok"]}],
        "raw": r,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        res = run(Path(tmp))
    print(json.dumps(res, indent=1))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
