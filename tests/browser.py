"""A headless Chromium for the browser tests (the system's chromium and chromedriver, driven by Selenium).

Skips the calling test with the reason when either is missing; `.ci/run` installs them.
"""
from __future__ import annotations

import contextlib
import shutil
import tempfile

import pytest

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


def find_browser() -> tuple[str, str]:
    browser = next((p for p in map(shutil.which, CHROMIUM) if p), None)
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("needs a system Chromium and chromedriver (apt-get install chromium chromium-driver)")
    pytest.importorskip("selenium", reason="needs selenium (pip install selenium)")
    return browser, driver


@contextlib.contextmanager
def chromium(page_load_timeout: float = 60):
    """A fresh headless Chromium with its own profile; its console log is readable with get_log('browser')."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = find_browser()
    with tempfile.TemporaryDirectory(prefix="parbp-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = browser
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        driver = webdriver.Chrome(options=options, service=Service(driver_path))
        try:
            driver.set_page_load_timeout(page_load_timeout)
            driver.set_script_timeout(page_load_timeout)
            yield driver
        finally:
            driver.quit()
