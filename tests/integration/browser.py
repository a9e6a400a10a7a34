"""Debian's chromium, headless, driven by its chromedriver through selenium: the fixture and helpers the browser
tests share (Open WebUI's chat, Airflow's trigger form). chromium + chromedriver come with ``make tools``."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@pytest.fixture
def browser(tmp_path):
    """Debian's chromium, headless, driven by its chromedriver (no Selenium Manager download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver_bin = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver_bin, "chromium/chromedriver missing: `make tools` (scripts/install_tools.sh)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--no-proxy-server",
                "--window-size=1400,1000", f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=driver_bin,
                                                               log_output=str(tmp_path / "chromedriver.log")))
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()


@contextmanager
def evidence(driver, tmp_path: Path) -> Iterator[None]:
    """On failure keep ``failure.png`` and ``failure.html`` in ``tmp_path`` and name them in the error."""
    try:
        yield
    except BaseException as exc:
        shot, html = tmp_path / "failure.png", tmp_path / "failure.html"
        try:
            driver.save_screenshot(str(shot))
            html.write_text(driver.page_source)
        except Exception as saving:  # noqa: BLE001 - the browser may be gone; the original error matters
            print(f"could not save the page: {saving}")
        exc.add_note(f"page at failure: {shot} and {html} (url {driver.current_url})")
        raise


def dom_click(driver, element) -> None:
    """A DOM click (not hit-tested: an overlay or a tooltip over the element does not swallow it)."""
    driver.execute_script("arguments[0].click();", element)
