"""The hostile archive (tests/hostile/archive.py) end to end through the ``curate`` flow on a real
Prefect server: the run finishes (exit 0) in bounded time, every good exam is curated, every
fault has its own ledger row with its own reason, nothing failed, no planted name reaches the
research zone, the catalog or Prefect's database, and nothing outside the archive and OUT was
read (an outside patient) or written (zip-slip names, the archive itself)."""
from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import pytest

from mrifoundry.catalog.views import connect
from mrifoundry import ids
from mrifoundry.settings import load_salt
from mrifoundry.tasks.curation.archive.folder_index import encode_path
from tests.flows.helpers import find_phi
from tests.hostile.archive import PHI_NAMES, build

pytestmark = [pytest.mark.slow, pytest.mark.prefect_server]
RUN_SECONDS_MAX = 300


def _tree(root: Path) -> dict[bytes, tuple[int, int]]:
    """Every entry under ``root`` (bytes names, links not followed) with size and mtime."""
    out = {}
    for dirpath, dirs, files in os.walk(os.fsencode(root)):
        for name in dirs + files:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def hostile_run(prefect_server, tmp_path_factory):
    from mrifoundry.flows.curate import curate
    base = tmp_path_factory.mktemp("hostile")
    archive, outside, out = base / "archive", base / "outside", base / "out"
    expect = build(archive, outside)
    before = _tree(archive), _tree(outside)
    t0 = time.perf_counter()
    state = curate(archive=str(archive), reports=None, out=str(out), max_file_mb=48, return_state=True)
    seconds = time.perf_counter() - t0
    return dict(expect=expect, archive=archive, outside=outside, out=out, base=base, state=state,
                seconds=seconds, before=before)


def _rows(con, sql: str) -> list[dict]:
    cur = con.execute(sql)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]


def test_run_finishes_in_bounded_time(hostile_run):
    assert hostile_run["state"].is_completed(), hostile_run["state"].message
    assert hostile_run["seconds"] < RUN_SECONDS_MAX
    assert len(hostile_run["expect"].cases) >= 40


def test_every_good_exam_is_curated_and_nothing_failed(hostile_run):
    out, expect = hostile_run["out"], hostile_run["expect"]
    salt = load_salt(out)
    con = connect(out / "research")
    try:
        ok = dict(con.execute("SELECT exam_id, COUNT(*) FROM series WHERE status = 'ok' GROUP BY 1").fetchall())
        failed = _rows(con, "SELECT stage, reason, item_kind, message FROM stage_results WHERE status = 'failed'")
    finally:
        con.close()
    assert not failed
    missing = {acc: (n, ok.get(ids.exam_id(acc, salt), 0)) for acc, n in expect.good.items()
               if ok.get(ids.exam_id(acc, salt), 0) != n}
    assert not missing, missing
    assert ids.exam_id(expect.outside_accession, salt) not in ok   # a patient reached only through links


def _item_id(item: tuple, salt: str, series_uids: dict) -> str:
    kind = item[0]
    if kind in ("file", "container", "symlink", "folder"):
        return f"{kind}:" + ids.opaque_id(kind, encode_path(item[1]), salt)
    if kind == "unattributed":
        return f"{ids.exam_id(item[1], salt)}/unattributed"
    return ids.series_id(series_uids[(item[1], item[2])], salt)


def test_each_fault_has_its_own_ledger_row(hostile_run):
    out, expect = hostile_run["out"], hostile_run["expect"]
    salt = load_salt(out)
    con = sqlite3.connect(out / "state" / "ledger.sqlite")
    rows = {(r[0], r[1]): (r[2], r[3]) for r in con.execute("SELECT item_id, stage, status, reason FROM stage_results")}
    con.close()
    wrong = {}
    for case, want in expect.rows.items():
        for w in want:
            got = rows.get((_item_id(w.item, salt, expect.series_uids), w.stage))
            if got != (w.status, w.reason):
                wrong.setdefault(case, []).append((w.stage, w.status, w.reason, got))
    assert not wrong, wrong
    reasons = {r for _, r in rows.values() if r}
    assert len(reasons & {"special_file", "outside_archive", "unreadable_source", "file_too_large",
                          "container_refused", "container_empty", "container_unreadable", "unattributed_file",
                          "unreadable_file", "malformed_header"}) == 10


def test_no_planted_name_reaches_research_catalog_or_prefect(hostile_run):
    """Independent of the product's audit: GNU grep over research/, the ledger and Prefect's
    database (compressed files expanded first) for the planted names in their usual spellings
    (``DOE JOHN``, ``JOHN DOE``, ``DOE, JOHN``, ``JOHN_DOE``) and the MRNs and accession numbers."""
    out, expect = hostile_run["out"], hostile_run["expect"]
    names = list(PHI_NAMES) + [n.replace("^", "_") for n in PHI_NAMES] + \
        ["_".join(reversed(n.split("^"))) for n in PHI_NAMES]
    manifest = {"phi": {"names": names, "ids": expect.identifiers, "uids": []}}
    roots = [out / "research", out / "state"]
    db = Path(os.environ["PREFECT_HOME"]) / "prefect.db"
    if db.exists():
        roots.append(db)
    hits = [h for h in find_phi(roots, manifest) if b"johndoe" not in h[2].lower()]   # Prefect's own schema example
    assert not hits, hits[:10]
    con = connect(out / "research")
    try:
        desc = {r[0] for r in con.execute("SELECT series_description FROM series WHERE series_description IS NOT NULL")
                .fetchall()}
    finally:
        con.close()
    assert "IntAsc GD0" in {d.strip() for d in desc}   # the phantom's description, its name token gone


def test_nothing_outside_archive_and_out_was_touched(hostile_run):
    archive, outside, base = hostile_run["archive"], hostile_run["outside"], hostile_run["base"]
    assert (_tree(archive), _tree(outside)) == hostile_run["before"]
    assert {p.name for p in base.iterdir()} == {"archive", "outside", "out", "scratch"}
    assert not list(base.glob("**/evil*")) or all("restricted" in str(p) for p in base.glob("**/evil*"))


def test_rerun_does_nothing_new(hostile_run):
    from mrifoundry.flows.curate import curate
    out = hostile_run["out"]
    con = connect(out / "research")
    try:
        before = con.execute("SELECT COUNT(*) FROM series").fetchone()[0]
    finally:
        con.close()
    state = curate(archive=str(hostile_run["archive"]), reports=None, out=str(out), max_file_mb=48,
                   rerun="failed", return_state=True)
    assert state.is_completed(), state.message
    res = state.result()
    assert res["selection"]["exams_with_failures"] == 0
    con = connect(out / "research")
    try:
        assert con.execute("SELECT COUNT(*) FROM series").fetchone()[0] == before
    finally:
        con.close()
