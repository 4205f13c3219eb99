"""The review page built by the real pipeline (issue 23), end to end: curate a few exams of the
embedded sample (PNG and NIfTI at 3 mm, the plain runner), open ``research/qc/index.html`` in
headless Chromium, check it against the catalog, exclude a series with the keyboard, export the
decision, import it with the CLI and check that the training views lose that series and that the
rebuilt page shows the decision as imported."""
from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import pytest

from .browser import Browser, browser  # noqa: F401  (browser is a fixture)

RATER = "dr demo"


@pytest.fixture(scope="module")
def demo(manifest, sample, tmp_path_factory) -> dict:
    """Two brain exams and a knee exam curated with PNG and NIfTI at 3 mm (volume_catalog's
    pattern, PNG on): {"out", "research", "page", "seconds"}."""
    from mrifoundry.params import CurateParams
    from mrifoundry.tasks.curation.runner import run_curation
    from mrifoundry.tasks.curation.workspace import Workspace
    from tests.flows.helpers import clean_exams, copy_exams
    picked = clean_exams(manifest, ("BRAIN", "BRAIN", "KNEE"))
    archive, out = tmp_path_factory.mktemp("review-archive"), tmp_path_factory.mktemp("review-out")
    copy_exams(manifest, sample, archive, lambda e: e in picked)
    t0 = time.perf_counter()
    res = run_curation(CurateParams(archive=str(archive), reports=None, out=str(out), workers=1,
                                    write_png=True, write_nifti=True, voxel_size_mm=3.0, phi_audit=False))
    research = Workspace(out).research
    assert res["review_page"] == str(research / "qc" / "index.html")
    return {"out": out, "research": research, "page": Path(res["review_page"]), "seconds": time.perf_counter() - t0}


def _sql(research: Path, sql: str, *params) -> list[tuple]:
    from mrifoundry.catalog.views import connect
    con = connect(research)
    try:
        return con.execute(sql, list(params)).fetchall()
    finally:
        con.close()


def _load(b: Browser, url: str, clear: bool = False) -> None:
    d = b.driver
    d.get(url)
    if clear:   # every file:// page shares one origin: start from an empty localStorage
        d.execute_script("localStorage.clear()")
        d.get(url)
    b.wait_for("return window.MRIF_APP && document.querySelectorAll('#gallery .card').length")


def _keys(b: Browser, keys: str) -> None:
    from selenium.webdriver import ActionChains
    ActionChains(b.driver).send_keys(keys).perform()


def _card(b: Browser, sid: str):
    from selenium.webdriver.common.by import By
    return b.driver.find_element(By.CSS_SELECTOR, f'#gallery .card[data-sid="{sid}"]')


def _shown(b: Browser) -> list[str]:
    from selenium.webdriver.common.by import By
    return [c.get_attribute("data-sid") for c in b.driver.find_elements(By.CSS_SELECTOR, "#gallery .card")
            if c.is_displayed()]


def test_page_matches_the_catalog(browser, demo):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    print(f"curation with the review page: {demo['seconds']:.1f} s")
    research, d = demo["research"], browser.driver
    _load(browser, demo["page"].as_uri(), clear=True)
    n_series = _sql(research, "SELECT count(*) FROM series")[0][0]
    cards = d.find_elements(By.CSS_SELECTOR, "#gallery .card")
    assert len(cards) == n_series > 0
    assert d.find_element(By.ID, "count").text == f"{n_series} of {n_series} shown"
    # every converted series has a thumbnail that loaded
    assert d.execute_script("return [...document.querySelectorAll('#gallery img.thumb')]"
                            ".every(i => i.complete && i.naturalWidth > 0)")
    # the builder's body part: the series' own, else the exam's
    counts = dict(_sql(research, "SELECT coalesce(r.body_part, e.body_part), count(*) FROM series r "
                                 "JOIN exams e USING (exam_id) GROUP BY ALL"))
    assert "knee" in counts, counts
    Select(d.find_element(By.NAME, "body_part")).select_by_value("knee")
    assert len(_shown(browser)) == counts["knee"]
    assert d.find_element(By.ID, "count").text == f"{counts['knee']} of {n_series} shown"
    # a log axis exactly where a metric's values are all > 0 and span more than 50×
    scales = {s.get_attribute("data-metric"): s.get_attribute("data-scale")
              for s in d.find_elements(By.CSS_SELECTOR, "#plots .strip")}
    from mrifoundry.tasks.curation.review.page import METRICS
    assert set(scales) == set(METRICS)
    for m in METRICS:
        lo, hi, n = _sql(research, f"SELECT min({m}), max({m}), count({m}) FROM series_quality "
                                   f"WHERE isfinite({m})")[0]
        log = n > 1 and lo > 0 and hi / lo > 50
        assert scales[m] == ("log" if log else "linear"), (m, lo, hi)
    assert browser.severe() == []
    assert browser.foreign_requests() == []


def test_viewer_loads_the_viewer_copy(browser, demo):
    from selenium.webdriver.common.by import By
    from mrifoundry.tasks.curation.review.viewer_volumes import viewer_copy
    research, d = demo["research"], browser.driver
    _load(browser, demo["page"].as_uri(), clear=True)
    # a knee series: its slab is thin, so a wrong axis order would show
    sid, nifti = _sql(research, "SELECT series_id, nifti_file FROM series r JOIN exams e USING (exam_id) "
                                "WHERE r.status = 'ok' AND nifti_file IS NOT NULL "
                                "ORDER BY coalesce(r.body_part, e.body_part) = 'knee' DESC, series_id LIMIT 1")[0]
    expected = list(viewer_copy(nib.load(nifti)).shape)
    _card(browser, sid).click()
    _keys(browser, "v")
    state = browser.wait_for("const s = window.MRIF_APP.viewerState();"
                             f"return s.loaded_series_id === {json.dumps(sid)} && !s.loading ? s : null", 30)
    assert state["open"] and state["bundled"] is True and state["error"] is None, state
    assert state["n_volumes"] == 1
    assert state["dims"] == expected
    assert d.find_element(By.ID, "viewer-canvas").is_displayed()
    time.sleep(0.5)   # let niivue draw its first frame
    browser.screenshot("review-page-demo.png")
    assert browser.severe() == []
    assert browser.foreign_requests() == []


def test_exclude_export_import(browser, demo, capsys):
    from selenium.webdriver.common.by import By
    from mrifoundry.flows.cli import main
    research, out, d = demo["research"], demo["out"], browser.driver
    url = demo["page"].as_uri()
    _load(browser, url, clear=True)
    run_id = d.execute_script("return window.MRIF_QC.run.run_id")
    # the series with the most slices, so the training views visibly lose rows
    sid, n_slices = _sql(research, "SELECT series_id, count(*) FROM slices GROUP BY series_id "
                                   "ORDER BY count(*) DESC, series_id LIMIT 1")[0]
    before = _sql(research, "SELECT count(*) FROM training_slices")[0][0]
    assert _sql(research, "SELECT count(*) FROM training_volumes WHERE series_id = ?", sid)[0][0] == 1

    d.find_element(By.ID, "rater").send_keys(RATER)
    _card(browser, sid).click()
    _keys(browser, "e")
    assert "exclude" in _card(browser, sid).text
    d.find_element(By.ID, "export-json").click()
    (exported,) = browser.wait_for_files([f"review-{run_id}.json"])
    doc = json.loads(exported.read_text())
    assert doc["rater"] == RATER and [(x["series_id"], x["decision"]) for x in doc["decisions"]] == [(sid, "exclude")]

    assert main(["review", "import", str(exported), "--out", str(out)]) == 0
    assert "imported 1 decision(s) (1 exclude)" in capsys.readouterr().out
    assert _sql(research, "SELECT count(*) FROM training_slices WHERE series_id = ?", sid)[0][0] == 0
    assert _sql(research, "SELECT count(*) FROM training_slices")[0][0] == before - n_slices
    assert _sql(research, "SELECT count(*) FROM training_volumes WHERE series_id = ?", sid)[0][0] == 0
    rows = _sql(research, "SELECT series_id, decision, rater FROM review_decisions")
    assert rows == [(sid, "exclude", RATER)]
    # the same file again: the key (series, rater, decided_at) makes it a no-op
    assert main(["review", "import", str(exported), "--out", str(out)]) == 0
    assert _sql(research, "SELECT count(*) FROM review_decisions")[0][0] == 1

    # the rebuilt page (same localStorage): the decision now comes from the catalog
    _load(browser, url)
    assert "exclude (imported)" in _card(browser, sid).text
    assert browser.driver.execute_script("return window.MRIF_APP.decisions()") == {}
    assert browser.severe() == []
    assert browser.foreign_requests() == []
