"""The user's path: `make deploy`-style registration, a process worker, and
`prefect deployment run curate/curate-demo` on the embedded sample; sampling rules,
no PHI anywhere outside the restricted zone, and an idempotent second run."""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from mrifoundry.catalog.views import connect
from tests.flows.helpers import find_phi

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
REPO = Path(__file__).resolve().parents[2]
PREFECT = str(REPO / ".venv" / "bin" / "prefect")
EXCLUDE = re.compile(r"\b(BRAIN|HEAD|FACE|FACIAL|NECK|ORBITS?|IACS?|INTERNAL AUDITORY|PITUITARY|SELLA|SINUS(ES)?|TMJ)\b")


def _run_deployment() -> str:
    r = subprocess.run([PREFECT, "deployment", "run", "curate/curate-demo", "--watch", "--watch-timeout", "900"],
                       cwd=REPO, capture_output=True, text=True, timeout=1000)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = re.search(r"UUID:\s*([0-9a-f-]{36})", r.stdout)
    return m.group(1) if m else ""


@pytest.fixture(scope="module")
def demo(prefect_server, sample, test_home):
    subprocess.run([str(REPO / "deploy" / "worker.sh"), "deploy"], cwd=REPO, check=True, timeout=300)
    subprocess.run([str(REPO / "deploy" / "worker.sh"), "start"], cwd=REPO, check=True, timeout=60)
    run_id = _run_deployment()
    return test_home / "demo", run_id


def _ledger_attempts(out: Path) -> dict:
    con = sqlite3.connect(out / "state" / "ledger.sqlite")
    rows = dict(((i, s), a) for i, s, a in con.execute("SELECT item_id, stage, attempt FROM stage_results"))
    con.close()
    return rows


def _expected_counts(sample: Path, n: int) -> dict[str, int]:
    """Independent re-derivation of per-protocol counts from the raw export (greedy, rarest first)."""
    by_proto: dict[str, list[tuple[str, str]]] = {}
    with open(sample / "reports.csv", newline="") as fh:
        for r in csv.DictReader(fh):
            d = dt.date.fromisoformat(r["report_date"])
            proto = " ".join(r["report_type"].split()).upper()
            if r["modality"] != "MR" or not (dt.date(2016, 1, 1) <= d <= dt.date(2020, 12, 31)) or EXCLUDE.search(proto):
                continue
            by_proto.setdefault(proto, []).append((r["accession_number"], r["patient_mrn"]))
    return {p: len(v) for p, v in by_proto.items()}, by_proto


def test_both_deployments_registered_with_their_parameters(demo):
    r = subprocess.run([PREFECT, "deployment", "inspect", "curate/curate-duke110k"], cwd=REPO,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert re.search(r"'n_per_protocol':\s*150", r.stdout) and "2016-01-01" in r.stdout
    r = subprocess.run([PREFECT, "deployment", "ls"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "curate-demo" in r.stdout and "curate-duke110k" in r.stdout


def test_sampling_rules_hold(demo, sample):
    out, _ = demo
    pools, by_proto = _expected_counts(sample, 3)
    con = sqlite3.connect(":memory:")
    con.close()
    import duckdb
    rep = duckdb.connect(str(out / "restricted" / "restricted.duckdb"), read_only=True)
    chosen = rep.execute("SELECT protocol, patient_mrn FROM reports WHERE sampled").fetchall()
    rep.close()
    per = Counter(p for p, _ in chosen)
    mrns = [m for _, m in chosen]
    assert len(mrns) == len(set(mrns)), "more than one exam of a patient"
    assert set(per) <= set(pools)
    for proto, pool in by_proto.items():
        patients = {m for _, m in pool}
        assert per[proto] <= min(3, len(patients))
        if len(patients - (set(mrns) - {m for p, m in chosen if p == proto})) >= 3:
            assert per[proto] == 3, proto
    assert not any(EXCLUDE.search(p) for p in per), "a facial-anatomy protocol was sampled"


def test_catalog_answers_sql(demo):
    out, _ = demo
    r = subprocess.run([str(REPO / ".venv" / "bin" / "mrifoundry"), "sql", "--out", str(out), "--format", "csv",
                        "SELECT COUNT(*) AS n FROM exams"], capture_output=True, text=True, cwd="/")
    assert r.returncode == 0, r.stderr
    n = int(r.stdout.splitlines()[1])
    con = connect(out / "research")
    assert n == con.execute("SELECT COUNT(DISTINCT exam_id) FROM stage_results WHERE stage='catalog' "
                            "AND status='done'").fetchone()[0] > 10
    con.close()


def test_summary_artifact_and_montage(demo):
    out, _ = demo
    md = (out / "research" / "qc" / "summary.md").read_text()
    assert "| catalog |" in md or "## Catalog" in md
    from mrifoundry.tasks.curation.qc import montage_is_informative
    assert montage_is_informative(out / "research" / "qc" / "montage.png")
    # the review page of the run, linked from a Prefect artifact, one record per catalogued series
    page = out / "research" / "qc" / "index.html"
    art = subprocess.run([PREFECT, "artifact", "inspect", "curate-review-page"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, COLUMNS="2000"))
    assert f"file://{page.resolve()}" in art.stdout, art.stdout[-2000:] + art.stderr[-2000:]
    data = json.loads((page.parent / "data.js").read_text().removeprefix("window.MRIF_QC = ").rstrip(";\n"))
    con = connect(out / "research")
    n_series = con.execute("SELECT count(*) FROM series").fetchone()[0]
    con.close()
    assert len(data["series"]) == n_series > 0


# the tiny configuration of each volume / multi-contrast recipe, through its own deployment
_RECIPE_RUNS = {
    "pretrain-triad": ("triad-tiny", []),
    "pretrain-prism": ("prism-tiny", []),
    # stage 2 on the knee series only: the stage-1 weights continue there
    "pretrain-brainsegfounder": ("brainsegfounder-tiny", ["-p", "stage2_query=SELECT series_id, exam_id, nifti_file "
                                 "FROM series WHERE nifti_path IS NOT NULL AND body_part ILIKE 'knee'"]),
    # the demo catalog has no brain (facial-anatomy protocols are excluded): stack the T1/T2
    # series of two body exams, the missing FLAIR filled by the rule
    "pretrain-brainfound": ("brainfound-tiny", ["-p", "query=SELECT series_id, exam_id, nifti_path, sequence_type, "
                            "orientation, contrast, n_slices FROM series WHERE nifti_path IS NOT NULL AND exam_id IN (SELECT "
                            "exam_id FROM series WHERE sequence_type IN ('T1', 'T2') AND orientation = 'axial' "
                            "GROUP BY exam_id HAVING COUNT(DISTINCT sequence_type) = 2 ORDER BY exam_id LIMIT 2)"]),
}


def test_volume_and_multicontrast_deployments_on_the_demo_catalog(demo):
    """pretrain-triad, -brainsegfounder, -brainfound and -prism run their tiny recipes through
    Prefect against the demo catalog (concurrently: the worker takes them together); each
    checkpoint reloads through the zoo and embeds."""
    import math

    import torch

    from mrifoundry.models import zoo
    out, _ = demo
    procs = {}
    for deployment, (recipe, extra) in _RECIPE_RUNS.items():
        procs[deployment] = subprocess.Popen(
            [PREFECT, "deployment", "run", f"pretrain/{deployment}", "-p", f"recipe={recipe}", "-p", f"out={out}",
             "-p", f"run_name={recipe}-demo", "-p", 'overrides={"max_iterations": 2}', *extra,
             "--watch", "--watch-timeout", "900"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
    for deployment, proc in procs.items():
        log = proc.communicate(timeout=1000)[0]
        assert proc.returncode == 0, deployment + "\n" + log[-3000:]
    con = connect(out / "research")
    rows = {r[0]: r[1:] for r in con.execute(
        "SELECT model_id, objective, arch, iterations, n_slices, final_loss, checkpoint_file, init FROM models "
        "WHERE model_id LIKE '%-tiny-demo%'").fetchall()}
    con.close()
    assert set(rows) >= {f"{r}-demo" for r, _ in _RECIPE_RUNS.values()} | {"brainsegfounder-tiny-demo-stage2"}
    for model_id, (objective, arch, iterations, n, loss, ckpt, init) in rows.items():
        assert iterations == 2 and n >= 2 and math.isfinite(loss) and Path(ckpt).is_file(), model_id
    assert rows["brainsegfounder-tiny-demo-stage2"][-1] == "stage 1 (brainsegfounder-tiny-demo)"
    vol = torch.rand(2, 1, 32, 32, 32)
    for model_id, entry in (("triad-tiny-demo", "triad-swin"), ("prism-tiny-demo", "prism"),
                            ("brainsegfounder-tiny-demo-stage2", "brainsegfounder")):
        m = zoo.load(entry, rows[model_id][5])
        feats = m.pooled(vol)
        assert feats.shape[0] == 2 and torch.isfinite(feats).all() and feats.std() > 0, model_id
    bf = zoo.load("brainfound", rows["brainfound-tiny-demo"][5], arch="vit_tiny")
    assert bf.pooled(torch.rand(2, 3, 64, 64)).shape == (2, bf.embed_dim)


def test_no_phi_outside_restricted_zone(demo, manifest, sample, test_home):
    out, _ = demo
    roots = [out / "research", out / "state", test_home / "prefect", test_home / "logs"]
    hits = find_phi([r for r in roots if r.exists()], manifest)
    assert not hits, hits[:10]
    # positive controls: the search finds PHI where it is (raw export, restricted catalog)
    assert {k for _, k, _ in find_phi([sample / "reports.csv"], manifest)} >= {"text", "number"}
    assert {k for _, k, _ in find_phi([out / "restricted" / "restricted.duckdb"], manifest)} >= {"number"}


def test_second_run_adds_nothing_and_redoes_nothing(demo):
    out, _ = demo
    con = connect(out / "research")
    before = con.execute("SELECT (SELECT COUNT(*) FROM exams), (SELECT COUNT(*) FROM series), "
                         "(SELECT COUNT(*) FROM slices)").fetchone()
    con.close()
    attempts = _ledger_attempts(out)
    _run_deployment()
    con = connect(out / "research")
    after = con.execute("SELECT (SELECT COUNT(*) FROM exams), (SELECT COUNT(*) FROM series), "
                        "(SELECT COUNT(*) FROM slices)").fetchone()
    con.close()
    assert after == before
    assert _ledger_attempts(out) == attempts, "a finished item was redone"


def test_pretrain_and_extract_features_deployments_on_the_demo_catalog(demo, manifest):
    """`prefect deployment run pretrain/pretrain-mri-core` (tiny recipe) on the demo catalog,
    then `extract-features` with the checkpoint it wrote: both land in the catalog."""
    out, _ = demo
    r = subprocess.run([PREFECT, "deployment", "run", "pretrain/pretrain-mri-core", "-p", "recipe=mri-core-tiny",
                        "-p", f"out={out}", "-p", "run_name=tiny-demo", "-p", 'overrides={"max_iterations": 3}',
                        "--watch", "--watch-timeout", "600"], cwd=REPO, capture_output=True, text=True, timeout=700)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    con = connect(out / "research")
    row = con.execute("SELECT iterations, n_slices, checkpoint_file, loss_curve_file, final_loss FROM models "
                      "WHERE model_id = 'tiny-demo'").fetchone()
    n_train = con.execute("SELECT COUNT(*) FROM training_slices").fetchone()[0]
    con.close()
    assert row is not None and row[0] == 3 and row[1] == n_train
    ckpt, curve = Path(row[2]), Path(row[3])
    assert curve.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    art = subprocess.run([PREFECT, "artifact", "inspect", "pretrain-loss-curve"], cwd=REPO, capture_output=True,
                         text=True, timeout=60, env=dict(os.environ, COLUMNS="2000"))  # no line wrapping
    assert str(curve) in art.stdout
    assert ckpt.exists()
    # by model_id: the flow takes checkpoint and arch from the models table
    r = subprocess.run([PREFECT, "deployment", "run", "extract-features/extract-features", "-p", f"out={out}",
                        "-p", "pretrained=tiny-demo", "-p",
                        "query=SELECT slice_id FROM training_slices ORDER BY slice_id LIMIT 30",
                        "--watch", "--watch-timeout", "600"], cwd=REPO, capture_output=True, text=True, timeout=700)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    con = connect(out / "research")
    n, dim = con.execute("SELECT COUNT(*), MAX(len(embedding)) FROM features WHERE feature_set = 'tiny-demo'").fetchone()
    con.close()
    assert (n, dim) == (30, 64)
    # nothing the downstream flows wrote (run dirs, features, Prefect's database) carries PHI
    hits = find_phi([out / "research" / "models", out / "research" / "features"], manifest)
    assert not hits, hits[:10]
