"""Debian's headless Chromium driven by selenium, with a fresh profile and the console log kept."""

from __future__ import annotations

import contextlib
import shutil
import tempfile

import pytest

CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--window-size=1400,1800",
)


def chromium_paths() -> tuple[str, str] | None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def chromium():
    """A webdriver on a throwaway profile; skips the test (with the reason) when Chromium is absent."""
    paths = chromium_paths()
    if paths is None:
        pytest.skip("needs Debian's chromium and chromium-driver (make deps-system installs them when root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="mlserve-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = paths[0]
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(paths[1]), options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_errors(driver) -> list[dict]:
    """Console entries at SEVERE (errors, failed loads, CSP refusals) since the last call."""
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
