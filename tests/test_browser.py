"""The operator page in a real browser: Debian's chromium driven by Selenium through Debian's
chromedriver (SE_OFFLINE=true: Selenium Manager downloads nothing), headless, against
`dicomcr serve` in its own process with a small model, while a study flows through it.

The browser logs in with the form, then watches, without reloading, as the page's script follows
the node: the study arrives, its four saliency captures appear as thumbnails, and an image that
failed for real (its transcoder could not write its output: a file stood where the output folder
goes) is retried from its Retry button once the cause is gone, and is then delivered.

DICOMCR_PAGE_SCREENSHOT=docs/operator-page.png saves the page, as the failure shows, for the
README.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pydicom
import pytest
from peers import free_port, require
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait
from test_inference import model  # noqa: F401  (the fixture: a small CNN3 model file)
from test_node import MG_A, MG_B, NodeProcess, _study, storescu
from test_web import OPERATOR_TOKEN, write_token

FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--disable-background-networking", "--disable-component-update", "--no-first-run",
         "--window-size=1200,1000")
WAIT = 60  # seconds for anything the page is waited for


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WebDriver]:
    """Headless chromium with a fresh profile, through the package's chromedriver."""
    binary, driver = require("chromium"), require("chromedriver")
    monkeypatch.setenv("SE_OFFLINE", "true")
    options = Options()
    options.binary_location = binary
    for flag in (*FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, read below
    chrome = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def wait(browser: WebDriver, what: str, condition: Callable[[WebDriver], object]) -> object:
    """`condition` once it holds (a page swapped meanwhile is looked at again)."""
    def holds(driver: WebDriver) -> object:
        try:
            return condition(driver)
        except StaleElementReferenceException:
            return False

    return WebDriverWait(browser, WAIT, poll_frequency=0.25).until(
        holds, f"the page did not show {what} within {WAIT} s")


def shown(browser: WebDriver, element_id: str) -> bool:
    return bool(browser.find_elements(By.ID, element_id))


def loaded_captures(browser: WebDriver, study: str) -> int:
    """The study's thumbnails the browser has loaded and decoded."""
    return browser.execute_script(
        "const s = document.getElementById(arguments[0]);"
        "return s ? Array.from(s.querySelectorAll('img.capture'))"
        "  .filter(i => i.complete && i.naturalWidth > 0).length : 0;", f"study-{study}")


def same_page(browser: WebDriver) -> bool:
    """Whether the page was swapped in place since `mark_page` (not reloaded)."""
    return browser.execute_script("return window.dicomcrMarked === true;")


def mark_page(browser: WebDriver) -> None:
    browser.execute_script("window.dicomcrMarked = true;")


def save_screenshot(browser: WebDriver, path: Path) -> None:
    """The whole page as PNG, as long as it is (Chrome DevTools' capture beyond the viewport)."""
    size = browser.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(base64.b64decode(shot["data"]))


def test_the_page_follows_a_study_and_retries_a_failure_in_chromium(
        browser: WebDriver, small_cohort: Path, model: Path, tmp_path: Path) -> None:  # noqa: F811
    archive = tmp_path / "archive"
    http_port = free_port()
    node = NodeProcess(
        tmp_path / "node", {"folder": str(archive)},
        sites=[{"name": "hospital-a", "calling_ae": [MG_A], "cr": 20, "model": str(model)},
               {"name": "hospital-b", "calling_ae": [MG_B], "cr": 20}],
        http_port=http_port, http_token_file=str(write_token(tmp_path / "token", OPERATOR_TOKEN)),
        stable_seconds=60)
    try:
        study = _study(small_cohort, 3)  # a Hologic study: its crops fit the model's canvas
        study_uid = str(pydicom.dcmread(study[0], stop_before_pixels=True).StudyInstanceUID)
        failing = _study(small_cohort, 0)[0]
        failing_uid = str(pydicom.dcmread(failing, stop_before_pixels=True).SOPInstanceUID)
        blocker = node.folder / "data" / "out" / failing_uid  # where its output folder goes
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("in the way")

        # A browser cannot send the token: the page leads it to the login form.
        browser.get(f"http://127.0.0.1:{http_port}/")
        assert browser.current_url.endswith("/login")
        browser.find_element(By.ID, "token").send_keys(OPERATOR_TOKEN)
        browser.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
        wait(browser, "the page after the login", lambda b: shown(b, "sites"))
        assert "DICOMCR" in browser.find_element(By.TAG_NAME, "h1").text
        assert shown(browser, "site-hospital-a") and shown(browser, "site-hospital-b")
        assert "No study received yet." in browser.find_element(By.ID, "studies").text
        mark_page(browser)
        browser.get_log("browser")  # from here on, the console must stay clean

        assert storescu(node.port, MG_A, *study).returncode == 0
        assert storescu(node.port, MG_B, failing).returncode == 0
        wait(browser, "the study arriving", lambda b: shown(b, f"study-{study_uid}"))
        wait(browser, "its four thumbnails", lambda b: loaded_captures(b, study_uid) == 4)
        text = browser.find_element(By.ID, f"study-{study_uid}").text
        assert "left breast" in text and "right breast" in text
        wait(browser, "the failure", lambda b: shown(b, f"failure-{failing_uid}"))
        assert same_page(browser)  # all of it swapped in by the script, no reload
        if os.environ.get("DICOMCR_PAGE_SCREENSHOT"):
            save_screenshot(browser, Path(os.environ["DICOMCR_PAGE_SCREENSHOT"]))

        blocker.unlink()  # the cause goes; the operator presses Retry
        button = wait(browser, "the Retry button", lambda b: b.find_element(
            By.ID, f"failure-{failing_uid}").find_element(By.CSS_SELECTOR, "button.retry"))
        button.click()
        wait(browser, "what Retry did", lambda b: "1 failed item sent back" in b.find_element(
            By.CSS_SELECTOR, "p.note").text)
        mark_page(browser)
        wait(browser, "the retried image delivered", lambda b: b.find_element(
            By.ID, f"instance-{failing_uid}").get_attribute("data-state") == "done")
        assert not shown(browser, f"failure-{failing_uid}") and same_page(browser)
        delivered = [pydicom.dcmread(p, stop_before_pixels=True) for p in archive.rglob("*.dcm")]
        sources = [d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in delivered
                   if "SourceImageSequence" in d]
        assert failing_uid in sources
        # Nothing refused by the page's Content-Security-Policy, no request that failed.
        severe = [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        assert severe == []
    finally:
        assert node.terminate() == 0
