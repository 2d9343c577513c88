"""pytest plugin loaded by run_tests.py: the submission served on loopback, a browser, a
screenshot of every test.

It lives apart from the instructor's browser tests so that the tests folder holds only
tests: any pytest test that asks for `browser` and `app_url` runs against the submission.

The sandbox has no network, so a page that asks for anything outside the container gets
an error; each such request is kept as the test's `outside_request` property (in the JUnit
report), so the summary can say why a page that needs the outside did not work.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from collections.abc import Iterator
from contextlib import suppress
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common import utils

APP_ENV = "WEB_E2E_APP_DIR"
RESULTS_ENV = "WEB_E2E_RESULTS_DIR"
CHROMEDRIVER = "/usr/bin/chromedriver"
CHROMIUM = "/usr/bin/chromium"
PAGE_LOAD_TIMEOUT = "15"  # seconds (PAGE_LOAD_TIMEOUT); a page whose script never ends fails
# Chromium's console line for a request that failed: "<url> - Failed to load resource: net::ERR_..."
FAILED_REQUEST = re.compile(
    r"^(?P<url>(?:https?|wss?)://\S+) - Failed to load resource: (?P<error>net::\w+)"
)
OUTSIDE_REQUEST = "outside_request"  # the JUnit property naming a request that left loopback


class QuietHandler(SimpleHTTPRequestHandler):
    """Serves files; requests are not logged (the browser's many requests are noise)."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def app_url() -> Iterator[str]:
    """The submission's web app, served on 127.0.0.1 only (the sandbox has no network)."""
    app = Path(os.environ.get(APP_ENV) or Path.cwd())
    if not (app / "index.html").is_file():
        found = sorted(p.name for p in app.glob("*.htm*"))
        pytest.fail(
            f"index.html not found in the submission (HTML files there: "
            f"{', '.join(found) or 'none'})",
            pytrace=False,
        )
    handler = functools.partial(QuietHandler, directory=str(app))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


class LoopbackService(Service):
    """chromedriver reached at 127.0.0.1, never by the name `localhost`, which Selenium uses:
    a container started with its network disabled (as the node starts it) gets an empty
    /etc/hosts, so `localhost` does not resolve there."""

    @property
    def service_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def is_connectable(self) -> bool:
        return bool(utils.is_connectable(self.port, "127.0.0.1"))


def chromium_options() -> webdriver.ChromeOptions:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    # --no-sandbox: the container is the sandbox (no capabilities, no user namespaces);
    # /dev/shm is small in a container, so shared memory goes to /tmp.
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        "--remote-debugging-pipe",
        "--window-size=1280,800",
        "--user-data-dir=/tmp/chromium-profile",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # failed requests, below
    return options


@pytest.fixture(scope="session")
def _driver(app_url: str) -> Iterator[webdriver.Chrome]:
    try:
        driver = webdriver.Chrome(service=LoopbackService(CHROMEDRIVER), options=chromium_options())
    except WebDriverException as exc:
        pytest.fail(f"Chromium did not start: {exc.msg}", pytrace=False)
    seconds = float(os.environ.get("PAGE_LOAD_TIMEOUT") or PAGE_LOAD_TIMEOUT)
    driver.set_page_load_timeout(seconds)
    driver.set_script_timeout(seconds)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def browser(_driver: webdriver.Chrome, app_url: str) -> webdriver.Chrome:
    """The browser on a fresh copy of the app's start page (storage of the last test gone)."""
    _driver.get(app_url)
    _driver.delete_all_cookies()
    _driver.execute_script("window.localStorage.clear(); window.sessionStorage.clear();")
    _driver.get(app_url)
    return _driver


def screenshot_name(nodeid: str) -> str:
    test = nodeid.split("::", 1)[-1]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", test).strip("_")[:120] + ".png"


def outside_requests(driver: webdriver.Chrome) -> list[str]:
    """The requests to anywhere but the served app since the last call, as `url (error)`.

    The browser's log is read (and emptied) here; a crashed tab has none to give."""
    entries: list[dict[str, Any]] = []
    with suppress(WebDriverException):
        entries = driver.get_log("browser")
    found = []
    for entry in entries:
        failed = FAILED_REQUEST.match(str(entry.get("message", "")))
        if failed and not failed["url"].startswith("http://127.0.0.1:"):
            found.append(f"{failed['url']} ({failed['error']})")
    return list(dict.fromkeys(found))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """After each test's call (or a failed setup), keep what the browser showed, and the
    requests it tried to make outside the container."""
    outcome = yield
    report = outcome.get_result()
    driver = getattr(item, "funcargs", {}).get("browser")
    shot_now = report.when == "call" or (report.when == "setup" and report.failed)
    results = os.environ.get(RESULTS_ENV)
    if driver is None or not shot_now or not results:
        return
    for request in outside_requests(driver):  # in the JUnit report with the test's teardown
        item.user_properties.append((OUTSIDE_REQUEST, request))
    folder = Path(results) / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        driver.save_screenshot(str(folder / screenshot_name(item.nodeid)))
    except WebDriverException as exc:
        report.sections.append(("screenshot", f"no screenshot: {exc.msg}"))
