"""A real headless browser for the dashboard's tests: Debian's Chromium driven by its own
chromedriver through Selenium (no browser download: a lab machine may have no internet).

Every test gets the session's browser with a clean slate (no page, no storage) and leaves a
screenshot of the page it ended on under `.run/screenshots/`; `shoot` saves more on the way.
A missing browser FAILS with a clear message: a skipped browser test proves nothing.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".run" / "screenshots"
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,900",
)
Shoot = Callable[[str], Path]


@pytest.fixture(scope="session")
def chromium() -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the session, with a fresh profile removed afterwards."""
    if not CHROMEDRIVER.exists() or not CHROMIUM.exists():
        pytest.fail(
            "Chromium or chromedriver is missing. Run the tests with scripts/test, which "
            "installs Debian's chromium and chromium-driver.",
            pytrace=False,
        )
    profile = tempfile.mkdtemp(prefix="ulos-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    try:
        driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    except WebDriverException as exc:
        shutil.rmtree(profile, ignore_errors=True)
        pytest.fail(f"headless Chromium did not start: {exc.msg}", pytrace=False)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture
def shoot(chromium: webdriver.Chrome, request: pytest.FixtureRequest) -> Iterator[Shoot]:
    """`shoot(label)` saves the page as it is now; the page the test ends on is saved too."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")

    def save(label: str) -> Path:
        path = SHOTS / f"{test}--{label}.png"
        chromium.save_screenshot(str(path))
        return path

    yield save
    with contextlib.suppress(WebDriverException):  # a gone browser already failed the test
        save("end")


@pytest.fixture
def browser(chromium: webdriver.Chrome, shoot: Shoot) -> webdriver.Chrome:
    """The session's browser on a blank page: no state carried over from the last test."""
    chromium.get("about:blank")
    chromium.delete_all_cookies()
    return chromium
