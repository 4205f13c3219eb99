"""The offline QC review page (issue 23) in headless Chromium, on a qc/ folder written by hand in
the data contract (data.js, thumbs/, volumes/) — no curation run needed. The page must work from
file:// with nothing from the network, show a card per series, filter, select from the strip
plots, open a real .nii.gz in niivue, record keyboard decisions and export them."""
from __future__ import annotations

import base64
import csv
import gzip
import io
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from .browser import REPO, Browser, browser  # noqa: F401  (browser is a fixture)

STATIC = REPO / "tasks" / "curation" / "review" / "static"
VENDOR_NIIVUE = STATIC / "vendor" / "niivue.js"
RUN_ID = "run-20250101-synthetic"
SHAPE = (24, 20, 16)
XSS = '<img src=x onerror="window.PWNED=1">SAG <b>PD</b> & "FS"'


def _volume(seed: int) -> np.ndarray:
    """A bright ellipsoid with noise: something recognisable in the viewer and the thumbnail."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    vol = 800.0 * ((x / 0.8) ** 2 + (y / 0.6) ** 2 + (z / 0.7) ** 2 < 1) + 300.0 * (x > 0.2 * seed - 0.3)
    return (vol + rng.normal(0, 40, SHAPE)).clip(0).astype(np.float32)


def _nii_gz(vol: np.ndarray) -> bytes:
    img = nib.Nifti1Image(vol, np.diag([1.5, 1.2, 2.0, 1.0]))
    return gzip.compress(img.to_bytes(), mtime=0)


def _thumb(vol: np.ndarray, path: Path) -> None:
    """Sagittal | coronal | axial mid-slices side by side, each 64×64 (the builder's is ≤ 128)."""
    planes = [vol[SHAPE[0] // 2, :, :], vol[:, SHAPE[1] // 2, :], vol[:, :, SHAPE[2] // 2]]
    tiles = [Image.fromarray((255 * np.rot90(p) / vol.max()).astype(np.uint8)).resize((64, 64)) for p in planes]
    sheet = Image.new("L", (192, 64))
    for i, t in enumerate(tiles):
        sheet.paste(t, (64 * i, 0))
    sheet.save(path)


def _series(sid, **kw):
    s = dict(series_id=sid, exam_id="ex-" + sid[-2:], body_part="knee", sequence_type="T1",
             orientation="sagittal", manufacturer="SIEMENS", model="Skyra", field_strength=3.0,
             series_description="SAG T1", status="ok", reason=None, thumb=f"thumbs/{sid}.png",
             volume=f"volumes/{sid}.js", nifti_shape="x".join(map(str, SHAPE)),
             iqm={"snr": 12.0, "snr_dietrich": 40.0, "cnr": 3.0, "ghosting": 0.02, "saturated_fraction": 0.0},
             z={"snr": 0.1, "cnr": 0.0, "ghosting": None},
             outlier=False, flags=[], decision=None)
    s.update(kw)
    return s


SERIES = [
    _series("s-0a1f01", image_set="phase",
            iqm={"snr": 14.2, "snr_dietrich": 60.0, "cnr": 3.4, "ghosting": 0.02, "saturated_fraction": 0.0}),
    _series("s-0a1f02", series_description=XSS, sequence_type="PD", outlier=True, flags=["snr_low"],
            iqm={"snr": 2.1, "snr_dietrich": 40.0, "cnr": 1.1, "ghosting": 0.05, "saturated_fraction": 0.0},
            z={"snr": -4.2, "cnr": -2.0, "ghosting": 1.0}),
    # flags of other metrics whose names start with "snr" / an absolute flag: only their own rows are red
    _series("s-0a1f03", body_part="brain", sequence_type="T2", manufacturer="GE", model="Signa",
            field_strength=1.5, orientation="axial", outlier=True, flags=["snr_dietrich_low", "saturated"],
            iqm={"snr": 20.5, "snr_dietrich": 3.0, "cnr": 5.0, "ghosting": None, "saturated_fraction": 0.02}),
    _series("s-0a1f04", body_part="brain", manufacturer="GE", model="Signa", field_strength=1.5,
            iqm={"snr": 18.0, "snr_dietrich": 2500.0, "cnr": 4.1, "ghosting": 0.01, "saturated_fraction": 0.0},
            decision={"decision": "include", "note": "fine", "rater": "dr a", "decided_at": "2025-01-02T10:00:00Z"}),
    _series("s-0a1f05", status="rejected", reason="duplicate_series", thumb=None, volume=None,
            nifti_shape=None, iqm=None, z=None),
    _series("s-0a1f06", body_part=None, manufacturer=None, status="failed", reason="conversion_error",
            thumb=None, volume=None, nifti_shape=None, iqm={"snr": None, "snr_dietrich": None, "cnr": None,
                                                            "ghosting": None, "saturated_fraction": None}, z=None),
]


def write_qc_folder(qc: Path, *, with_niivue: bool = True) -> Path:
    """The builder's job done by hand: static assets + data.js + thumbs + volumes (data contract)."""
    (qc / "assets").mkdir(parents=True)
    (qc / "thumbs").mkdir()
    (qc / "volumes").mkdir()
    shutil.copy(STATIC / "index.html", qc / "index.html")
    for name in ("app.js", "app.css"):
        shutil.copy(STATIC / name, qc / "assets" / name)
    if with_niivue and VENDOR_NIIVUE.exists():
        shutil.copy(VENDOR_NIIVUE, qc / "assets" / "niivue.js")
    for i, s in enumerate(SERIES):
        if s["thumb"] or s["volume"]:
            vol = _volume(i)
            _thumb(vol, qc / s["thumb"])
            b64 = base64.b64encode(_nii_gz(vol)).decode()
            sid = s["series_id"]
            (qc / s["volume"]).write_text(
                "window.MRIF_VOLUMES = window.MRIF_VOLUMES || {};\n"
                f"window.MRIF_VOLUMES[{json.dumps(sid)}] = \"{b64}\";\n")
    data = {
        "format": "mrifoundry-qc/1",
        "run": {"run_id": RUN_ID, "built_at": "2025-01-01T12:00:00Z", "code_version": "test", "n_series": len(SERIES)},
        "metrics": [
            {"name": "snr", "label": "SNR", "better": "higher", "doc": "mean foreground / sd background"},
            {"name": "snr_dietrich", "label": "SNR (Dietrich)", "better": "higher", "doc": "foreground / air noise"},
            {"name": "cnr", "label": "CNR", "better": "higher", "doc": "tissue contrast over noise"},
            {"name": "ghosting", "label": "Ghosting", "better": "lower", "doc": "signal outside the head/limb"},
            {"name": "saturated_fraction", "label": "saturated", "better": "lower", "doc": "clipped voxels"},
        ],
        "reasons": {"duplicate_series": "same pixel data as another series",
                    "conversion_error": "NIfTI conversion failed"},
        "series": SERIES,
    }
    (qc / "data.js").write_text("window.MRIF_QC = " + json.dumps(data, indent=1) + ";\n")
    return qc / "index.html"


@pytest.fixture(scope="module")
def qc_page(tmp_path_factory) -> str:
    return write_qc_folder(tmp_path_factory.mktemp("qc") / "qc").as_uri()


@pytest.fixture
def page(browser, qc_page):
    """A fresh load with empty localStorage (every file:// page shares one origin)."""
    d = browser.driver
    d.get(qc_page)
    d.execute_script("localStorage.clear()")
    d.get(qc_page)
    browser.wait_for("return window.MRIF_APP && document.querySelectorAll('#gallery .card').length")
    return browser


def _keys(b: Browser, keys: str) -> None:
    from selenium.webdriver import ActionChains
    ActionChains(b.driver).send_keys(keys).perform()


def _card(b: Browser, sid: str):
    from selenium.webdriver.common.by import By
    return b.driver.find_element(By.CSS_SELECTOR, f'#gallery .card[data-sid="{sid}"]')


def _app(b: Browser, expr: str):
    return b.driver.execute_script("return window.MRIF_APP." + expr)


def test_loads_offline_with_a_card_per_series(page):
    from selenium.webdriver.common.by import By
    d = page.driver
    cards = d.find_elements(By.CSS_SELECTOR, "#gallery .card")
    assert [c.get_attribute("data-sid") for c in cards] == [s["series_id"] for s in SERIES]
    assert d.find_element(By.ID, "count").text == f"{len(SERIES)} of {len(SERIES)} shown"
    assert page.severe() == []
    assert page.foreign_requests() == []
    assert any(u.startswith("file:") and u.endswith("/data.js") for u in page.requests), page.requests
    # header text is text: the description's markup is shown, never parsed
    assert XSS in _card(page, "s-0a1f02").text
    assert "knee · T1 · sagittal · phase" in _card(page, "s-0a1f01").text   # the image set tells cards apart
    assert d.execute_script("return window.PWNED") is None
    # rejected / failed series: grey cards with the reason code and its meaning
    rejected = _card(page, "s-0a1f05")
    assert "status-rejected" in rejected.get_attribute("class")
    assert "duplicate_series same pixel data as another series" in rejected.text
    assert "conversion_error" in _card(page, "s-0a1f06").text
    assert "include (imported)" in _card(page, "s-0a1f04").text
    # one strip per metric, a dot per series with a value; the flagged dot is coloured
    assert len(d.find_elements(By.CSS_SELECTOR, "#plots .strip")) == 5
    assert len(d.find_elements(By.CSS_SELECTOR, '#plots circle[data-metric="snr"]')) == 4
    assert len(d.find_elements(By.CSS_SELECTOR, '#plots circle[data-metric="ghosting"]')) == 3
    def flagged(metric):
        return [c.get_attribute("data-sid")
                for c in d.find_elements(By.CSS_SELECTOR, f'#plots circle.flagged[data-metric="{metric}"]')]

    # a flag colours its own metric's dot only: snr_dietrich_low is not about snr, saturated is
    # about saturated_fraction
    assert flagged("snr") == ["s-0a1f02"]
    assert flagged("snr_dietrich") == ["s-0a1f03"]
    assert flagged("saturated_fraction") == ["s-0a1f03"]
    assert flagged("cnr") == []
    # the detail pane: the same rows red
    _card(page, "s-0a1f03").click()
    red = [r.find_element(By.TAG_NAME, "th").text
           for r in d.find_elements(By.CSS_SELECTOR, "#detail table.iqm tr.flagged")]
    assert red == ["SNR (Dietrich)", "saturated"]


def test_skewed_metric_gets_a_log_axis(page):
    from selenium.webdriver.common.by import By
    d = page.driver
    scales = {s.get_attribute("data-metric"): s.get_attribute("data-scale")
              for s in d.find_elements(By.CSS_SELECTOR, "#plots .strip")}
    # snr_dietrich spans 3…2500 (all > 0, max/min > 50); saturated_fraction has zeros
    assert scales == {"snr": "linear", "snr_dietrich": "log", "cnr": "linear", "ghosting": "linear",
                      "saturated_fraction": "linear"}
    strip = d.find_element(By.CSS_SELECTOR, '#plots .strip[data-metric="snr_dietrich"]')
    assert "log" in strip.find_element(By.CSS_SELECTOR, ".strip-label").text
    cx = {c.get_attribute("data-sid"): float(c.get_attribute("cx"))
          for c in strip.find_elements(By.CSS_SELECTOR, "circle")}
    # x is linear in log(value): 40 lies where log10(40) lies between log10(3) and log10(2500)
    frac = (cx["s-0a1f02"] - cx["s-0a1f03"]) / (cx["s-0a1f04"] - cx["s-0a1f03"])
    assert frac == pytest.approx((np.log10(40) - np.log10(3)) / (np.log10(2500) - np.log10(3)), abs=0.01)
    # decade ticks 10, 100, 1000
    assert len(strip.find_elements(By.CSS_SELECTOR, "line.tick-mark")) == 3
    # a dot on the log axis still opens its series
    strip.find_element(By.CSS_SELECTOR, 'circle[data-sid="s-0a1f04"]').click()
    assert _app(page, "selected()") == "s-0a1f04"
    assert _app(page, "viewerState().series_id") == "s-0a1f04"


def test_filters_reduce_the_cards(page):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
    d = page.driver

    def shown():
        return [c.get_attribute("data-sid") for c in d.find_elements(By.CSS_SELECTOR, "#gallery .card") if c.is_displayed()]

    Select(d.find_element(By.NAME, "body_part")).select_by_value("knee")
    assert shown() == ["s-0a1f01", "s-0a1f02", "s-0a1f05"]
    assert d.find_element(By.ID, "count").text == f"3 of {len(SERIES)} shown"
    Select(d.find_element(By.NAME, "status")).select_by_value("ok")
    assert shown() == ["s-0a1f01", "s-0a1f02"]
    Select(d.find_element(By.NAME, "outlier")).select_by_value("yes")
    assert shown() == ["s-0a1f02"]
    d.find_element(By.ID, "reset-filters").click()
    page.wait_for(f"return document.getElementById('count').textContent === '{len(SERIES)} of {len(SERIES)} shown'")
    Select(d.find_element(By.NAME, "body_part")).select_by_value("(unknown)")
    assert shown() == ["s-0a1f06"]
    Select(d.find_element(By.NAME, "body_part")).select_by_value("")
    Select(d.find_element(By.NAME, "decision")).select_by_value("include")
    assert shown() == ["s-0a1f04"]
    assert d.find_element(By.ID, "count").text == f"1 of {len(SERIES)} shown"


def test_strip_plot_dot_selects_and_opens_the_series(page):
    from selenium.webdriver.common.by import By
    d = page.driver
    dot = d.find_element(By.CSS_SELECTOR, '#plots circle[data-metric="snr"][data-sid="s-0a1f03"]')
    dot.click()
    assert _app(page, "selected()") == "s-0a1f03"
    assert "selected" in _card(page, "s-0a1f03").get_attribute("class")
    state = _app(page, "viewerState()")
    assert state["open"] and state["series_id"] == "s-0a1f03"
    # every plot marks the selected series
    assert len(d.find_elements(By.CSS_SELECTOR, '#plots circle.selected[data-sid="s-0a1f03"]')) == 4
    _keys(page, "\ue00c")  # Escape
    assert _app(page, "viewerState().open") is False


def test_viewer_shows_the_volume_in_niivue(page):
    if not VENDOR_NIIVUE.exists():
        pytest.skip("tasks/curation/review/static/vendor/niivue.js missing: run `make web`")
    from selenium.webdriver.common.by import By
    d = page.driver
    _card(page, "s-0a1f01").click()
    _keys(page, "v")
    state = page.wait_for("const s = window.MRIF_APP.viewerState();"
                          "return s.loaded_series_id === 's-0a1f01' && !s.loading ? s : null", 30)
    assert state["open"] and state["bundled"] is True and state["error"] is None
    assert state["n_volumes"] == 1
    assert state["dims"] == list(SHAPE)
    assert d.find_element(By.ID, "viewer-canvas").is_displayed()
    page.screenshot("review-page.png")
    # j moves to the next card and the viewer follows; still one volume
    _keys(page, "j")
    state = page.wait_for("const s = window.MRIF_APP.viewerState();"
                          "return s.loaded_series_id === 's-0a1f02' && !s.loading ? s : null", 30)
    assert state["n_volumes"] == 1 and state["series_id"] == "s-0a1f02"
    # a rejected series has no volume: the viewer says so instead of failing
    d.execute_script("window.MRIF_APP.openViewer('s-0a1f05')")
    page.wait_for("return window.MRIF_APP.viewerState().series_id === 's-0a1f05' && !window.MRIF_APP.viewerState().loading")
    assert "No volume for this series" in d.find_element(By.ID, "viewer-fallback").text
    _keys(page, "\ue00c")
    assert _app(page, "viewerState().open") is False
    assert page.severe() == []
    assert page.foreign_requests() == []


def test_keyboard_decisions_persist_and_export(page):
    from selenium.webdriver.common.by import By
    d = page.driver
    rater = d.find_element(By.ID, "rater")
    rater.send_keys("dr b")
    _card(page, "s-0a1f03").click()
    _keys(page, "e")
    assert "exclude" in _card(page, "s-0a1f03").text
    stored = json.loads(d.execute_script(f"return localStorage.getItem({json.dumps(_app(page, 'storageKey'))})"))
    assert stored["s-0a1f03"]["decision"] == "exclude" and stored["s-0a1f03"]["rater"] == "dr b"
    _keys(page, "n")
    assert d.switch_to.active_element.get_attribute("id") == "note"
    _keys(page, 'motion, "ghost"\n')
    assert _app(page, "decisions()")["s-0a1f03"]["note"] == 'motion, "ghost"'
    # j then i: the next card is included
    _card(page, "s-0a1f03").click()
    _keys(page, "ji")
    assert _app(page, "selected()") == "s-0a1f04"
    assert _app(page, "decisions()")["s-0a1f04"]["decision"] == "include"  # same as imported, note kept
    _keys(page, "ku")  # back to s-0a1f03: unsure replaces exclude, the note stays
    assert _app(page, "decisions()")["s-0a1f03"]["decision"] == "unsure"
    assert _app(page, "decisions()")["s-0a1f03"]["note"] == 'motion, "ghost"'
    _keys(page, "e")

    d.refresh()
    page.wait_for("return window.MRIF_APP && document.querySelectorAll('#gallery .card').length")
    assert "exclude" in _card(page, "s-0a1f03").text
    assert d.find_element(By.ID, "rater").get_attribute("value") == "dr b"

    d.find_element(By.ID, "export-json").click()
    d.find_element(By.ID, "export-csv").click()
    js, cs = page.wait_for_files([f"review-{RUN_ID}.json", f"review-{RUN_ID}.csv"])
    exported = json.loads(js.read_text())
    assert exported["format"] == "mrifoundry-review/1" and exported["run_id"] == RUN_ID
    assert exported["rater"] == "dr b" and exported["exported_at"]
    # the unchanged imported decision (include, "fine") is not sent back
    assert [(x["series_id"], x["decision"], x["note"]) for x in exported["decisions"]] == [
        ("s-0a1f03", "exclude", 'motion, "ghost"')]
    assert set(exported["decisions"][0]) == {"series_id", "decision", "note", "decided_at"}
    raw = cs.read_bytes().decode()
    assert raw.startswith("series_id,decision,note,rater,decided_at\r\n")
    rows = list(csv.DictReader(io.StringIO(raw, newline="")))
    assert [(r["series_id"], r["decision"], r["note"], r["rater"]) for r in rows] == [
        ("s-0a1f03", "exclude", 'motion, "ghost"', "dr b")]
    assert page.severe() == []
    assert page.foreign_requests() == []


def test_without_niivue_the_viewer_shows_the_thumbnail(browser, tmp_path):
    from selenium.webdriver.common.by import By
    d = browser.driver
    d.get(write_qc_folder(tmp_path / "qc", with_niivue=False).as_uri())
    browser.wait_for("return window.MRIF_APP")
    d.execute_script("window.MRIF_APP.openViewer('s-0a1f01')")
    state = browser.wait_for("const s = window.MRIF_APP.viewerState(); return s.bundled === false && !s.loading ? s : null")
    assert state["open"] and state["n_volumes"] == 0
    fallback = d.find_element(By.ID, "viewer-fallback")
    assert fallback.is_displayed()
    assert "3D viewer not bundled: run `make web` and rebuild the page" in fallback.text
    assert d.find_element(By.ID, "viewer-fallback-img").get_attribute("src").endswith("thumbs/s-0a1f01.png")
    assert browser.foreign_requests() == []
