"""The quality views and the review decisions, on a catalog written with the project's own
writers from phantom volumes: robust z-scores against NumPy, a planted ghost and a dropped slab
flagged, decisions honoured by training_slices / training_volumes, refused imports atomic."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from mrifoundry.catalog.schema import RESEARCH_TABLES
from mrifoundry.catalog.store import consolidate, write_exam_parts
from mrifoundry.catalog.views import build_research_db, connect
from mrifoundry.catalog.views_quality import MIN_GROUP, SPREAD_FLOOR, Z_CUT
from mrifoundry.errors import UsageError
from mrifoundry.tasks.curation.quality.series import series_quality
from mrifoundry.tasks.curation.review.decisions import import_decisions

SHAPE = (40, 40, 24)


def phantom(seed: int, ghost: float = 0.0, blank: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = np.abs(rng.normal(0, 2.0, SHAPE) + 1j * rng.normal(0, 2.0, SHAPE))
    body = np.zeros(SHAPE, bool)
    body[10:30, 8:32, 3:21] = True
    v[body] = 100 + rng.normal(0, 4.0, int(body.sum()))
    v[14:26, 12:28, 6:18] = 160 + rng.normal(0, 4.0, (12, 16, 12))
    if ghost:
        v += ghost * np.roll(np.where(body, v, 0.0), SHAPE[1] // 2, axis=1)
    if blank:
        v[:, :, 11:13] = np.where(body[:, :, 11:13], np.abs(rng.normal(0, 2.0, (40, 40, 2))), v[:, :, 11:13])
    return v.astype(np.float32)


def _catalog(research, volumes: dict[str, np.ndarray], small_group: int = 0):
    """One exam per series; all but the last ``small_group`` series in one scanner group."""
    for i, (sid, vol) in enumerate(volumes.items()):
        exam = f"e{i:03d}"
        model = "small" if i >= len(volumes) - small_group else "big"
        q = series_quality(vol, (1, 1, 1), "axial", "j")
        q["thumb_path"] = None
        write_exam_parts(research, exam, {
            "exams": [dict(exam_id=exam, patient_id=f"p{i}", body_part="knee")],
            "series": [dict(series_id=sid, exam_id=exam, status="ok", manufacturer="ACME", model=model,
                            field_strength=3.0, sequence_type="T2", nifti_path=f"nifti/{exam}/{sid}.nii.gz")],
            "slices": [dict(slice_id=f"{sid}_t00_z{z:04d}", series_id=sid, exam_id=exam, temporal_index=0,
                            slice_index=z, png_path=f"png/{exam}/{sid}/{z}.png") for z in range(3)],
            "series_quality": [dict(series_id=sid, exam_id=exam, **q)]})
    for t in RESEARCH_TABLES:
        if t.name != "stage_results":
            consolidate(research, t)
    from mrifoundry.catalog.store import write_table
    write_table(research, RESEARCH_TABLES[3], RESEARCH_TABLES[3].schema.empty_table())
    build_research_db(research)


@pytest.fixture(scope="module")
def research(tmp_path_factory):
    r = tmp_path_factory.mktemp("quality") / "research"
    vols = {f"s{i:02d}": phantom(i) for i in range(8)}
    vols["sghost"] = phantom(20, ghost=0.15)
    vols["sblank"] = phantom(21, blank=True)
    vols.update({f"t{i}": phantom(30 + i) for i in range(MIN_GROUP - 1)})   # a group too small for z
    _catalog(r, vols, small_group=MIN_GROUP - 1)
    return r


def _rows(research, sql, *args):
    con = connect(research)
    try:
        cur = con.execute(sql, list(args))
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]
    finally:
        con.close()


def test_robust_z_equals_numpy_within_the_group(research):
    rows = {r["series_id"]: r for r in _rows(research, "SELECT * FROM series_iqm_z WHERE model = 'big'")}
    assert len(rows) == 10 and {r["group_n"] for r in rows.values()} == {10}
    for m in ("snr", "cnr", "ghost_ratio", "efc"):
        x = np.array([rows[s][m] for s in sorted(rows)])
        med = np.median(x)
        mad = np.median(np.abs(x - med))
        for s, xi in zip(sorted(rows), x):
            spread = max(1.4826 * mad, SPREAD_FLOOR * abs(med))
            assert rows[s][f"{m}_z"] == pytest.approx((xi - med) / spread, rel=1e-9), (m, s)


def test_a_group_below_the_minimum_has_no_z(research):
    rows = _rows(research, "SELECT * FROM series_iqm_z WHERE model = 'small'")
    assert len(rows) == MIN_GROUP - 1 and all(r["snr_z"] is None and r["ghost_ratio_z"] is None for r in rows)


def test_the_planted_ghost_and_the_dropped_slab_are_the_outliers(research):
    flagged = {r["series_id"]: r["flags"] for r in _rows(research, "SELECT series_id, flags FROM quality_outliers")}
    assert "ghost_ratio_high" in flagged["sghost"]
    assert "blank_slices" in flagged["sblank"]
    clean = [s for s in flagged if s.startswith(("s0", "t"))]
    assert not clean, f"clean phantoms flagged: {clean} {[flagged[s] for s in clean]}"
    z = _rows(research, "SELECT ghost_ratio_z FROM series_iqm_z WHERE series_id = 'sghost'")[0]["ghost_ratio_z"]
    assert z > Z_CUT


def _export(path, decisions, rater="dr-a"):
    path.write_text(json.dumps({"format": "mrifoundry-review/1", "run_id": "qc-test", "rater": rater,
                                "exported_at": "2026-12-07T10:00:00Z", "decisions": decisions}))
    return path


def test_decisions_drive_the_training_views_and_imports_are_idempotent(research, tmp_path):
    count = lambda sql: _rows(research, sql)[0]["n"]  # noqa: E731
    n_slices = count("SELECT count(*) n FROM training_slices")
    n_vols = count("SELECT count(*) n FROM training_volumes")
    f = _export(tmp_path / "r.json", [{"series_id": "sghost", "decision": "exclude", "note": "N/2 ghost",
                                       "decided_at": "2026-12-07T10:00:00Z"},
                                      {"series_id": "s01", "decision": "unsure", "note": "",
                                       "decided_at": "2026-12-07T10:00:05Z"}])
    res = import_decisions(research, f)
    assert (res.decisions, res.excluded, res.raters) == (2, 1, ("dr-a",))
    assert count("SELECT count(*) n FROM training_slices") == n_slices - 3
    assert count("SELECT count(*) n FROM training_slices WHERE series_id = 'sghost'") == 0
    assert count("SELECT count(*) n FROM training_volumes") == n_vols - 1
    import_decisions(research, f)                                        # the same file again: no new row
    assert count("SELECT count(*) n FROM review_decisions") == 2
    # a later decision of another rater, as CSV, re-admits the series: the latest one counts
    csv = tmp_path / "r.csv"
    csv.write_text('series_id,decision,note,rater,decided_at\nsghost,include,"looked again, fine",dr-b,'
                   '2026-12-07T11:00:00Z\n')
    import_decisions(research, csv)
    latest = _rows(research, "SELECT decision, rater, note FROM series_decisions WHERE series_id = 'sghost'")
    assert latest == [{"decision": "include", "rater": "dr-b", "note": "looked again, fine"}]
    assert count("SELECT count(*) n FROM training_slices") == n_slices
    assert count("SELECT count(*) n FROM review_decisions") == 3


@pytest.mark.parametrize("bad, why", [
    ({"series_id": "nope", "decision": "exclude"}, "not in this catalog"),
    ({"series_id": "s02", "decision": "delete"}, "is not one of"),
    ({"series_id": "s02", "decision": "exclude", "decided_at": "yesterday"}, "not an ISO"),
])
def test_a_bad_row_refuses_the_whole_file(research, tmp_path, bad, why):
    before = _rows(research, "SELECT count(*) n FROM review_decisions")[0]["n"]
    good = {"series_id": "s03", "decision": "exclude", "note": "", "decided_at": "2026-12-07T12:00:00Z"}
    with pytest.raises(UsageError, match=why):
        import_decisions(research, _export(tmp_path / "bad.json", [good, {"note": "", **bad}]))
    assert _rows(research, "SELECT count(*) n FROM review_decisions")[0]["n"] == before


def test_a_file_without_a_rater_needs_one(research, tmp_path):
    f = _export(tmp_path / "nr.json", [{"series_id": "s04", "decision": "unsure", "note": "",
                                        "decided_at": dt.datetime(2026, 12, 7, 13, tzinfo=dt.timezone.utc).isoformat()}],
                rater="")
    with pytest.raises(UsageError, match="no rater"):
        import_decisions(research, f)
    assert import_decisions(research, f, rater="dr-c").raters == ("dr-c",)
    assert _rows(research, "SELECT count(*) n FROM review_decisions WHERE rater = 'dr-c'")[0]["n"] == 1
