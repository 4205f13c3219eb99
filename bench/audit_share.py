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


def run(work: Path) -> dict:
    from mrifoundry.settings import CurateParams
    from mrifoundry.vendor_corpus import build
    from tasks.exam_pipeline import curate_exam
    from tasks.finalize import finalize_catalog
    from tasks.phi_audit import audit_output, tokens
    from tasks.selection import select_exams
    from tasks.workspace import Workspace

    built, missing = build(work / "archive", CASES)
    out = work / "out"
    t0 = time.perf_counter()
    ws = Workspace(out)
    params = CurateParams(archive=str(work / "archive"), reports=None, out=str(out), workers=1)
    for exam_id in select_exams(ws, params).exam_ids:
        curate_exam(ws, params, exam_id)
    finalize_catalog(ws)
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
