"""Headless Debian Chromium driven by Selenium, for the offline review page tests.

Nothing may phone home: the driver is Debian's /usr/bin/chromedriver given by path (Selenium
Manager is never run) and SE_AVOID_STATS is set. The browser is the real binary under
/usr/lib/chromium, not the /usr/bin/chromium wrapper, whose /etc/chromium.d snippets add
``--enable-remote-extensions`` and load extensions. WebGL2 (niivue) comes from ANGLE on
SwiftShader, the CPU Vulkan implementation Chromium ships: no GPU is needed.

`make browser` installs chromium and chromium-driver with apt; without them the tests skip
(and fail under CI, where a skip would hide a broken install).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/lib/chromium/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

# WebGL2 in headless Chromium without a GPU: SwiftShader explicitly (the implicit software
# fallback is deprecated and would log a warning on every context).
FLAGS = [
    "--headless=new",
    "--no-sandbox",                    # root in a container
    "--disable-dev-shm-usage",         # small /dev/shm in containers
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-pings",
    "--disable-quic",
    "--metrics-recording-only",
    "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider",
    "--window-size=1440,900",
]


def artifacts_dir() -> Path:
    """Screenshots go to $MRIFOUNDRY_TEST_ARTIFACTS, else <repo>/var/test-artifacts (git-ignored)."""
    d = Path(os.environ.get("MRIFOUNDRY_TEST_ARTIFACTS") or REPO / "var" / "test-artifacts")
    d.mkdir(parents=True, exist_ok=True)
    return d


def require_chromium() -> None:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        msg = f"{', '.join(missing)} missing: run `make browser`"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


class Browser:
    """A Chrome driver plus what the tests read: console entries and every requested URL."""

    def __init__(self) -> None:
        require_chromium()
        os.environ["SE_AVOID_STATS"] = "true"
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = Path(tempfile.mkdtemp(prefix="mrif-chromium-"))
        self.downloads = self.profile / "downloads"
        self.downloads.mkdir()
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in FLAGS + [f"--user-data-dir={self.profile / 'profile'}"]:
            options.add_argument(flag)
        options.add_experimental_option("prefs", {
            "download.default_directory": str(self.downloads),
            "download.prompt_for_download": False,
            "download.directory_upgrade": True,
            "safebrowsing.enabled": False,
            "profile.default_content_setting_values.automatic_downloads": 1,
        })
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        service = Service(str(CHROMEDRIVER), log_output=str(self.profile / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=service, options=options)
        # headless Chrome ignores the download prefs unless told through CDP
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior", {
            "behavior": "allow", "downloadPath": str(self.downloads), "eventsEnabled": True})
        self.console: list[dict] = []
        self.requests: list[str] = []
        # Chrome's own start-up tab (chrome:// new-tab page) is not the page under test
        self.driver.get("about:blank")
        self.drain_logs()
        self.startup_requests, self.requests, self.console = self.requests, [], []

    def drain_logs(self) -> None:
        """get_log empties Chrome's buffers, so keep everything seen so far."""
        self.console += self.driver.get_log("browser")
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.requests.append(message["params"]["request"]["url"])

    def severe(self) -> list[dict]:
        self.drain_logs()
        return [e for e in self.console if e["level"] == "SEVERE"]

    def foreign_requests(self) -> list[str]:
        """Requests whose URL is not file:, data: or blob: — none is allowed."""
        self.drain_logs()
        return [u for u in self.requests if not u.startswith(("file:", "data:", "blob:"))]

    def screenshot(self, name: str) -> Path:
        path = artifacts_dir() / name
        self.driver.save_screenshot(str(path))
        print(f"screenshot: {path}")
        return path

    def wait_for(self, script: str, timeout: float = 20, *args):
        """Polls a JS expression (`return …`) until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.driver.execute_script(script, *args)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for: {script}")
            time.sleep(0.05)

    def wait_for_files(self, names: list[str], timeout: float = 10) -> list[Path]:
        deadline = time.monotonic() + timeout
        paths = [self.downloads / n for n in names]
        while not all(p.exists() and p.stat().st_size > 0 for p in paths):
            if time.monotonic() > deadline:
                raise AssertionError(f"downloads missing: {names}; have {sorted(os.listdir(self.downloads))}")
            time.sleep(0.05)
        return paths

    def quit(self) -> None:
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    b = Browser()
    try:
        yield b
    finally:
        b.quit()
