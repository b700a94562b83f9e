"""The status page in Debian's headless Chromium: it renders every model, the split, the drift alert
and the LLM panel from a live server, its admin buttons act through the admin API, it asks for a
key when keys are on (kept in session storage) and shows actions only to admin keys, and the
console stays free of errors throughout. Screenshots go to $MLSERVE_SCREENSHOTS (default: the
test's tmp folder)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.ui.browser import chromium, console_errors
from tests.ui.traffic import call

WAIT_S = 20
pytestmark = pytest.mark.timeout(120)  # each test, server start included; the waits inside are 20 s


def _shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MLSERVE_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _wait(driver, css: str, predicate=None, act=None):
    """Wait until `css` matches (and `predicate(elements)` holds), then run `act(elements)`. The page
    re-renders every few seconds, so an element found a moment ago may be gone: look again."""
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def found(d):
        try:
            elements = d.find_elements(By.CSS_SELECTOR, css)
            if not elements or (predicate is not None and not predicate(elements)):
                return False
            return act(elements) if act is not None else [e.text for e in elements]
        except StaleElementReferenceException:
            return False

    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(found, f"no {css} on the page")


def _click(driver, css: str) -> None:
    _wait(driver, css, act=lambda els: els[0].click() or True)


def _type(driver, css: str, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    _wait(driver, css, act=lambda els: els[0].send_keys(Keys.CONTROL, "a") or els[0].send_keys(text) or True)


def test_page_renders_models_split_drift_llm_and_rolls_back(ui_server, driven, tmp_path):
    url = ui_server.url
    status, state, _ = call(f"{url}/admin/models/mlp/pin", {"version": 1})
    assert status == 200 and state["serving"] == 1
    with chromium() as driver:
        driver.get(url + "/")
        names = _wait(driver, "section.model", act=lambda els: [e.get_attribute("data-model") for e in els])
        assert names == ["drifty", "mlp", "tiny-gpt2"]
        assert _wait(driver, "section[data-model=mlp] .split .seg") == ["v1 50%", "v2 50%"]
        _wait(driver, "section[data-model=drifty] .drift-status[data-status=alert]")
        _wait(driver, "section[data-model=drifty] svg.hist rect.live")
        _wait(driver, "section[data-model=mlp] table.versions svg.spark polyline")
        _wait(driver, "section[data-model=mlp] .experiment tbody tr", lambda els: len(els) == 2)
        assert "KV cache" in _wait(driver, "section[data-model=tiny-gpt2] .llm")[0]
        _wait(driver, "section[data-model=mlp] [data-pinned='1']")
        driver.save_screenshot(str(_shots(tmp_path) / "status-page.png"))
        loaded = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        assert loaded and all(name.startswith(url + "/") for name in loaded), loaded  # nothing from elsewhere

        _click(driver, "section[data-model=mlp] button[data-action=rollback]")
        _wait(driver, "section[data-model=mlp] [data-pinned='2']")
        assert "rollback done, serving v2" in _wait(driver, "#message")[0]
        assert call(f"{url}/admin/models/mlp")[1]["serving"] == 2
        _click(driver, "section[data-model=mlp] button[data-action=unpin]")
        _wait(driver, "#message", lambda els: "unpin done" in els[0].text)
        assert call(f"{url}/admin/models/mlp")[1]["pinned"] is None
        assert console_errors(driver) == []


def test_keys_on_the_page_asks_and_shows_actions_only_to_admin_keys(auth_server, tmp_path):
    url, tokens = auth_server.url, auth_server.tokens
    with chromium() as driver:
        driver.get(url + "/")
        _wait(driver, "#login", lambda els: els[0].is_displayed())
        _type(driver, "#key", tokens["reader"])
        _click(driver, "#login button[type=submit]")
        _wait(driver, "section[data-model=mlp]")
        assert "key reader" in _wait(driver, "#who")[0]
        assert driver.find_elements("css selector", "button[data-action]") == []
        assert driver.execute_script("return sessionStorage.getItem('mlserve.key')") == tokens["reader"]
        assert driver.execute_script("return localStorage.length") == 0
        driver.save_screenshot(str(_shots(tmp_path) / "status-page-reader.png"))

        _click(driver, "#logout")
        _wait(driver, "#login", lambda els: els[0].is_displayed())
        _type(driver, "#key", tokens["ops"])
        _click(driver, "#login button[type=submit]")
        for v, weight in (("1", "80"), ("2", "20")):  # a typed value survives a re-render
            _type(driver, f"section[data-model=mlp] input[data-split-version='{v}']", weight)
        _click(driver, "section[data-model=mlp] button[data-action=split]")
        _wait(driver, "section[data-model=mlp] .split .seg", lambda els: [e.text for e in els] == ["v1 80%", "v2 20%"])
        status, traffic, _ = call(f"{url}/admin/models/mlp/traffic", token=tokens["ops"])
        assert status == 200 and traffic["split"] == {"1": 80.0, "2": 20.0} and traffic["source"] == "api"
        plan = {"version": "2", "steps": [30, 100], "interval_s": 600}
        assert call(f"{url}/admin/models/mlp/rollout", plan, token=tokens["ops"])[0] == 202
        _wait(driver, "section[data-model=mlp] .rollout", lambda els: "step 1/2 at 30%" in els[0].text)
        assert _wait(driver, "section[data-model=mlp] .shadow")[0].startswith("shadow v2 (100%): agreement")
        assert console_errors(driver) == []
