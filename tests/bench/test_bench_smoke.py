"""Smoke test of the bench (bench/run.py --tiny): every section except the Prefect flow runs
on tiny sizes, and the report has its tables with finite numbers. The flow section is
covered by `python -m bench.run --quick` (it starts its own Prefect server, too slow here)."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tables(md: str) -> list[list[list[str]]]:
    """Markdown tables as lists of rows (header and separator rows dropped)."""
    tables, cur = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            cur.append([c.strip() for c in line.strip("|").split("|")])
        elif cur:
            tables.append(cur[2:])
            cur = []
    return tables


def test_tiny_bench_writes_a_report_with_finite_numbers(tmp_path):
    out, raw = tmp_path / "benchmarks.md", tmp_path / "raw.json"
    r = subprocess.run([sys.executable, "-m", "bench.run", "--tiny", "--sections",
                        "conversion,curation,rss,catalog,volumes,ingest",
                        "--out", str(out), "--json", str(raw)],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    md = out.read_text()
    for heading in ("## Machine", "## Versions", "## Targets", "## Per-series conversion",
                    "## Curation cost per series", "## Scaling and memory", "## Catalog at Duke-110K size",
                    "## Volume-recipe data loading", "## NIfTI/BIDS ingest"):
        assert heading in md
    assert "Command: `python -m bench.run --tiny" in md
    tables = _tables(md)
    assert len(tables) >= 7
    numbers = [float(m) for t in tables for row in t for c in row
               for m in re.findall(r"(?<![\w.])-?\d+(?:\.\d+)?(?![\w.])", c.replace(",", ""))]
    assert numbers and all(math.isfinite(x) for x in numbers)
    assert not re.search(r"\b(nan|inf)\b", md, re.IGNORECASE)
    # the conversion table has every converter, each with a positive median
    conv = next(t for t in tables if any("dicom2nifti .nii" == row[1] for row in t if len(row) > 1))
    assert {row[1] for row in conv} >= {"ours .nii (native)", "dicom2nifti .nii.gz", "dcm2niix -z y",
                                        "ours .nii.gz (RAS 1 mm)"}
    assert all(float(row[2]) > 0 for row in conv)
    # eleven catalog queries (the quality outliers view among them), each timed cold and warm
    cat = json.loads(raw.read_text())["Catalog at Duke-110K size"]["queries"]
    assert len(cat) == 11 and all(len(q["cold"]) == 3 and len(q["warm"]) == 3 for q in cat)
    # volume draws: every draw timed both ways, the ratio is uncached / cached per draw
    vol = json.loads(raw.read_text())["Volume-recipe data loading"]
    assert len(vol["ratios"]) == len(vol["uncached_s"]) == len(vol["warm_s"]) == 4
    assert vol["ratios"] == [a / b for a, b in zip(vol["uncached_s"], vol["warm_s"])]
