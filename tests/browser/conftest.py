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
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

from tests.support.browser import SHOTS, Shoot
from tests.support.dashboard_site import Site, running_site
from tests.support.services import Broker, FtpServer

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
def shoot(chromium: webdriver.Chrome, request: pytest.FixtureRequest) -> Shoot:
    """`shoot(label)` saves the page as it is now (`browser` saves the page a test ends on)."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")

    def save(label: str) -> Path:
        path = SHOTS / f"{test}--{label}.png"
        chromium.save_screenshot(str(path))
        return path

    return save


@pytest.fixture
def browser(chromium: webdriver.Chrome, shoot: Shoot) -> Iterator[webdriver.Chrome]:
    """The session's browser on a blank page: no state carried over from the last test (and
    none left behind: a page's live stream would hold the tracker's shutdown up)."""
    chromium.get("about:blank")
    chromium.delete_all_cookies()
    yield chromium
    with contextlib.suppress(WebDriverException):
        shoot("end")
        chromium.get("about:blank")


@pytest.fixture(scope="module")
def site(
    broker: Broker, ftp_server: FtpServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """A real node and `ulos-py tracker` for the module's tests (see site.py)."""
    work = tmp_path_factory.mktemp("dashboard")
    database = f"sqlite:///{work / 'tracker.sqlite3'}"
    with running_site(broker, ftp_server, work / "node", database) as running:
        yield running
