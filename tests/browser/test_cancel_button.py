"""The journey page's cancel form in a real headless Chromium, over a real node and `ulos-py
tracker` with a token: a wrong token cancels nothing, the right one stops the running task,
and the page turns `cancelled` with who and why without a reload; the token is never in the
page unless typed, and kept nowhere after."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.support.browser import Shoot, mark_page, not_reloaded, path_of, texts, wait_until
from tests.support.dashboard_site import Site, running_site
from tests.support.services import Broker, FtpServer

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("broker")]

TOKEN = "tok-8f3a1c"
SLOW = '[[route]]\nstage = "*"\nexecutor = "slow"\n\n' + (
    '[executor.slow]\nkind = "builtin"\nbehaviour = "pass"\ndelay_seconds = 60\n'
)
"""Every stage waits a minute: the task runs when the cancel comes."""


@pytest.fixture(scope="module")
def token_site(
    broker: Broker, ftp_server: FtpServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    """A node whose stages wait, and a tracker that takes cancels (ULOS_TRACKER_TOKEN)."""
    work = tmp_path_factory.mktemp("cancel-site")
    registry = work / "registry.toml"
    registry.write_text(SLOW)
    with running_site(
        broker,
        ftp_server,
        work / "node",
        f"sqlite:///{work / 'tracker.sqlite3'}",
        tracker_extra={"ULOS_TRACKER_TOKEN": TOKEN},
        node_extra={"ULOS_EXECUTORS_FILE": registry},
    ) as running:
        yield running


def journey(site: Site, task_id: str) -> dict[str, Any] | None:
    """The task's journey from the tracker's API; None while it is unknown."""
    try:
        url = f"{site.url}/api/tasks/{quote(task_id, safe='')}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            found: dict[str, Any] = json.load(answer)
            return found
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise


def running(site: Site, task_id: str, timeout: float = 60) -> dict[str, Any]:
    """The journey once the task's stage executes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = journey(site, task_id)
        if found and "execution_started" in found["visits"][-1]["steps"]:
            return found
        time.sleep(0.2)
    pytest.fail(f"{task_id} did not start executing within {timeout} s", pytrace=False)


def fill(driver: webdriver.Chrome, name: str, value: str) -> None:
    field = driver.find_element(By.CSS_SELECTOR, f"#cancel-form [name={name}]")
    field.clear()
    field.send_keys(value)


def result(driver: webdriver.Chrome) -> tuple[str, str]:
    box = driver.find_element(By.ID, "cancel-result")
    return box.get_attribute("data-state") or "", box.text


def test_the_cancel_button_stops_a_running_task_and_the_page_says_who_and_why(
    browser: webdriver.Chrome, token_site: Site, shoot: Shoot
) -> None:
    site = token_site
    task_id = f"{site.prefix}/cancel me <b>now</b>"
    site.upload(f"/{site.prefix}/chain.zip")
    site.publish(site.chain(task_id, stages=2, timeout=120))
    running(site, task_id)

    browser.get(site.url + path_of(task_id))
    mark_page(browser)
    assert browser.find_element(By.CSS_SELECTOR, "h1 .state").text == "running"
    assert browser.find_element(By.ID, "cancel-form").is_displayed()
    assert TOKEN not in browser.page_source  # the page is never given the token
    shoot("form")

    reason = "withdrawn <i>late</i>"
    fill(browser, "token", "not-the-token")
    fill(browser, "by", "ta@lab")
    fill(browser, "reason", reason)
    browser.find_element(By.ID, "cancel-task").click()
    wait_until(browser, lambda d: result(d)[0] == "refused", "the wrong token refused")
    assert "not accepted" in result(browser)[1]
    assert browser.find_element(By.CSS_SELECTOR, "[name=token]").get_attribute("value") == ""
    assert (journey(site, task_id) or {})["state"] == "running"

    fill(browser, "token", TOKEN)
    browser.find_element(By.ID, "cancel-task").click()
    wait_until(browser, lambda d: result(d)[0] == "sent", "the cancel sent")
    assert "Cancel sent by ta@lab" in result(browser)[1]
    assert not browser.find_element(By.ID, "cancel-form").is_displayed()

    def cancelled(driver: webdriver.Chrome) -> bool:
        return texts(driver, "h1 .state") == ["cancelled"]

    wait_until(browser, cancelled, "the page turns cancelled", 30)
    assert not_reloaded(browser), "the journey reloaded instead of updating in place"
    assert texts(browser, ".facts .cancelled-by") == ["ta@lab"]
    assert texts(browser, ".facts .cancel-reason") == [reason]  # text, never markup
    assert not browser.find_elements(By.CSS_SELECTOR, ".facts .cancel-reason i, h1 b")
    assert texts(browser, ".crash .crash-kind") == ["cancelled"]
    shoot("cancelled")
    assert TOKEN not in browser.page_source
    kept = browser.execute_script(
        "return [localStorage.length, sessionStorage.length, document.cookie];"
    )
    assert kept == [0, 0, ""], kept

    found = journey(site, task_id) or {}
    assert (found["state"], found["cancelledBy"], found["cancelReason"]) == (
        "cancelled",
        "ta@lab",
        reason,
    )
    assert len(found["visits"]) == 1  # stopped at its first stage, never forwarded
    browser.refresh()  # an ended task offers no cancel
    wait_until(browser, cancelled, "the reloaded page says cancelled")
    assert not browser.find_elements(By.CSS_SELECTOR, "#cancel-form")
