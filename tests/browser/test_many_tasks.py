"""With 100 000 tasks stored, the overview and the task list are ready in the browser in
under a second, measured by the browser itself (Navigation Timing: from the start of the
navigation to the end of the load event). The numbers go to `.run/dashboard-timing.txt`."""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from tests.support.browser import SHOTS, Shoot
from tests.support.bulk_tasks import fill
from tests.support.dashboard_site import Site, running_site
from tests.support.services import Broker, FtpServer

pytestmark = pytest.mark.timeout(300)

TASKS = 100_000
BUDGET_MS = 1000
TIMING = SHOTS.parent / "dashboard-timing.txt"
PAGES = {
    "overview": "/",
    "tasks": "/tasks",
    "tasks searched": "/tasks?q=student-0042",
    "tasks by state": "/tasks?state=crashed",
    "tasks waiting": "/tasks?state=waiting",
}
HELD_TO_BUDGET = ("overview", "tasks", "tasks searched", "tasks waiting")
"""The pages the budget is for (the search and the waiting page read a trigram index and a
time-bounded range: each walked every task before); the others are measured beside them."""


@pytest.fixture(scope="module")
def full_site(
    broker: Broker, ftp_server: FtpServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Site, float]]:
    work = tmp_path_factory.mktemp("many")
    database = f"sqlite:///{work / 'tracker.sqlite3'}"
    began = time.monotonic()
    asyncio.run(fill(database, TASKS))
    filled = time.monotonic() - began
    with running_site(broker, ftp_server, work / "node", database, node=False) as site:
        yield site, filled


def ready_ms(driver: webdriver.Chrome) -> dict[str, float]:
    """The last navigation's timings, in milliseconds from its start."""
    entry = driver.execute_script(
        "const e = performance.getEntriesByType('navigation')[0];"
        "return {ready: e.loadEventEnd - e.startTime, response: e.responseEnd - e.startTime,"
        " dom: e.domContentLoadedEventEnd - e.startTime, status: e.responseStatus};"
    )
    assert entry["status"] == 200
    return {key: float(value) for key, value in entry.items() if key != "status"}


def test_overview_and_task_list_are_ready_in_under_a_second(
    browser: webdriver.Chrome, full_site: tuple[Site, float], shoot: Shoot
) -> None:
    site, filled = full_site
    results: dict[str, dict[str, float]] = {}
    for name, path in PAGES.items():
        browser.get(site.url + path)  # the first load warms the tracker's caches and ours
        runs = []
        for _ in range(5):
            browser.get(site.url + path)
            runs.append(ready_ms(browser))
        results[name] = {
            key: round(statistics.median(run[key] for run in runs), 1) for key in runs[0]
        } | {"worst ready": round(max(run["ready"] for run in runs), 1)}
        shoot(name.replace(" ", "-"))
    browser.get(site.url + "/")
    total = sum(
        int(card.text.replace(",", ""))
        for card in browser.find_elements(By.CSS_SELECTOR, ".cards .count")
    )
    report = {"tasks stored": total, "fill seconds": round(filled, 1), "pages (ms)": results}
    Path(TIMING).parent.mkdir(parents=True, exist_ok=True)
    Path(TIMING).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))

    assert total >= TASKS
    slow = {name: results[name]["ready"] for name in HELD_TO_BUDGET}
    slow = {name: ms for name, ms in slow.items() if ms >= BUDGET_MS}
    assert not slow, f"median time to ready over {BUDGET_MS} ms: {slow} ({report})"
