"""The dashboard in a real headless Chromium, over a real node and `ulos-py tracker`: the
demo's tasks appear, a running task changes state on the page without a reload, a crash
shows its reason, a 5-stage chain reads in order, and values from tasks never run."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException
from selenium.webdriver.common.by import By

from tests.support.browser import Shoot, mark_page, not_reloaded, path_of, texts, wait_until
from tests.support.dashboard_site import DEMO, Site

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("broker")]


def row_states(driver: webdriver.Chrome) -> dict[str, str]:
    """Task id → state of every row of the task table on the page (read in one go: a live
    update may replace the table at any moment)."""
    pairs = driver.execute_script(
        "return [...document.querySelectorAll('table.tasks tbody tr[data-href]')].map(r =>"
        " [r.querySelector('.task-link').textContent, r.querySelector('.state').textContent]);"
    )
    return dict(pairs)


def attrs(driver: webdriver.Chrome, css: str, name: str) -> list[str]:
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])]"
        " .map(e => e.getAttribute(arguments[1]));",
        css,
        name,
    )
    return found


def grade_sheet(driver: webdriver.Chrome) -> tuple[int, str]:
    """The owner page's CSV link, fetched by the page: its status and text."""
    link = driver.find_element(By.CSS_SELECTOR, "a.csv").get_attribute("href") or ""
    status, text = driver.execute_async_script(
        "const done = arguments[1];"
        "fetch(arguments[0]).then(r => r.text().then(t => done([r.status, t])));",
        link,
    )
    return int(status), str(text)


@pytest.fixture(scope="module")
def demo(site: Site) -> dict[str, str]:
    """The sample messages sent once for the module: name → task id."""
    tasks = {name: site.demo_task(name) for name in DEMO}
    for task in tasks.values():
        site.upload(task["filePath"])
    site.publish(*tasks.values())
    return {name: task["taskId"] for name, task in tasks.items()}


def test_the_demo_tasks_appear_and_end_where_expected(
    browser: webdriver.Chrome, site: Site, demo: dict[str, str], shoot: Shoot
) -> None:
    browser.get(f"{site.url}/tasks?q={quote(site.prefix)}")
    mark_page(browser)
    expected = {
        demo["pass"]: "delivered",
        demo["fail"]: "delivered",
        demo["skip"]: "delivered",
        demo["crash"]: "crashed",
        demo["chain-pass"]: "delivered",
        demo["chain-fail"]: "delivered",
        demo["chain-crash"]: "crashed",
    }

    def settled(driver: webdriver.Chrome) -> bool:
        shown = row_states(driver)
        return all(shown.get(task_id) == state for task_id, state in expected.items())

    wait_until(browser, settled, "every demo task in its final state on the live task list", 60)
    assert not_reloaded(browser), "the task list reloaded instead of updating in place"
    shoot("tasks")

    browser.get(site.url + "/")
    [crashed] = texts(browser, ".card-crashed .count")
    assert int(crashed) >= 2
    assert "execution" in texts(browser, ".crashes .crash-kind")
    [stages] = texts(browser, "table.stats")
    assert "testing-5" in stages
    assert texts(browser, "svg.chart polyline.series")
    [nodes] = texts(browser, "table.nodes")
    assert f"{site.prefix}-node" in nodes
    shoot("overview")

    # A row opens its journey; ids with a `/` work as URL-encoded path segments.
    browser.get(f"{site.url}/tasks?q={quote(demo['skip'])}")
    browser.find_element(By.CSS_SELECTOR, "tr[data-href] td:nth-child(4)").click()
    wait_until(browser, lambda d: d.current_url.endswith(path_of(demo["skip"])), "row opens")
    assert browser.find_element(By.CSS_SELECTOR, "h1 .task-id").text == demo["skip"]
    # Without ULOS_TRACKER_TOKEN there is no cancel form, even for a task not yet ended.
    assert browser.find_element(By.CSS_SELECTOR, "h1 .state").text == "delivered"
    assert not browser.find_elements(By.CSS_SELECTOR, "#cancel-form, [data-cancel]")


def test_a_crash_shows_its_kind_and_detail(
    browser: webdriver.Chrome, site: Site, demo: dict[str, str], shoot: Shoot
) -> None:
    browser.get(site.url + path_of(demo["crash"]))
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".crash"), "the crash", 30)
    kind = browser.find_element(By.CSS_SELECTOR, ".crash .crash-kind").text
    detail = browser.find_element(By.CSS_SELECTOR, ".crash .crash-detail").text
    assert kind == "execution"
    assert detail.strip(), "a crash must say why"
    assert browser.find_element(By.CSS_SELECTOR, "h1 .state").text == "crashed"


def test_the_chain_journey_shows_five_stages_in_order_and_its_path(
    browser: webdriver.Chrome, site: Site, demo: dict[str, str], shoot: Shoot
) -> None:
    browser.get(site.url + path_of(demo["chain-pass"]))

    def five(driver: webdriver.Chrome) -> list[str]:
        stages = attrs(driver, ".timeline .visit", "data-stage")
        return stages if len(stages) == 5 else []

    stages = wait_until(browser, five, "five visits on the journey", 40)
    assert stages == [f"testing-{n}" for n in range(1, 6)]
    bars = browser.find_elements(By.CSS_SELECTOR, ".timeline .visit .bar")
    assert len(bars) >= 5 * 4, "each stage's steps are drawn as bars"
    assert all(float(b.value_of_css_property("width").removesuffix("px")) > 0 for b in bars)
    assert texts(browser, ".tree li.taken > .tree-node .key") == [
        *(f"testing-{n}" for n in range(1, 6)),
        "lab.passed",
    ]
    greyed = browser.find_elements(By.CSS_SELECTOR, ".tree li.not-taken > .tree-node")
    assert len(greyed) == 5  # each stage's failure branch
    assert float(greyed[0].value_of_css_property("opacity")) < 1
    shoot("journey")

    # The stage output, fetched through the tracker when asked for, shown as text.
    browser.find_element(By.ID, "load-output").click()
    names = wait_until(
        browser, lambda d: texts(d, "#output-files details summary"), "the stage output", 30
    )
    assert f"output_{site.names.exchange}_testing-5.txt" in names, names
    browser.execute_script("document.getElementById('output-files').scrollIntoView();")
    shoot("output")


def test_a_running_task_changes_state_on_the_page_without_a_reload(
    browser: webdriver.Chrome, site: Site, shoot: Shoot
) -> None:
    task = site.chain(f"{site.prefix}-live", stages=4)
    site.upload(task["filePath"])
    browser.get(f"{site.url}/tasks?q={quote(task['taskId'])}")
    wait_until(browser, lambda d: d.find_element(By.ID, "live-status").text == "live", "SSE")
    mark_page(browser)
    assert task["taskId"] not in row_states(browser)

    site.publish(task)
    seen: list[str] = []

    def delivered(driver: webdriver.Chrome) -> bool:
        state = row_states(driver).get(task["taskId"])
        if state and (not seen or seen[-1] != state):
            seen.append(state)
            if state == "running":
                shoot("running")
        return state == "delivered"

    wait_until(browser, delivered, "the task delivered on the live list", 60)
    assert "running" in seen, f"states seen on the page: {seen}"
    assert not_reloaded(browser), "the page reloaded instead of updating in place"

    browser.get(site.url + path_of(task["taskId"]))
    assert len(browser.find_elements(By.CSS_SELECTOR, ".timeline .visit")) == 4


def test_a_journey_page_follows_its_task_live(
    browser: webdriver.Chrome, site: Site, shoot: Shoot
) -> None:
    task = site.chain(f"{site.prefix}/journey-live", stages=4)
    site.upload(task["filePath"])
    site.publish(task)

    def opened(driver: webdriver.Chrome) -> bool:
        driver.get(site.url + path_of(task["taskId"]))
        return bool(texts(driver, "h1 .task-id"))  # the task is known (not the 404 page)

    wait_until(browser, opened, "the journey page of the task", 20)
    wait_until(browser, lambda d: d.find_element(By.ID, "live-status").text == "live", "SSE")
    mark_page(browser)
    before = texts(browser, "h1 .state")
    assert before != ["delivered"], "the task ended before its page opened: nothing to follow"

    def ended(driver: webdriver.Chrome) -> bool:
        return texts(driver, "h1 .state") == ["delivered"]

    wait_until(browser, ended, "the journey delivered without a reload", 40)
    assert not_reloaded(browser), "the journey page reloaded instead of updating in place"
    stages = attrs(browser, ".timeline .visit", "data-stage")
    assert stages == [f"testing-{n}" for n in range(1, 5)]


def test_a_stuck_task_is_highlighted_on_the_overview(
    browser: webdriver.Chrome, site: Site, shoot: Shoot
) -> None:
    # Passed on to `lab.passed` with a further stage after it: waiting where no node serves.
    task = site.chain(f"{site.prefix}-stuck", stages=1)
    task["routingTree"]["successRoutingDecision"]["successRoutingDecision"] = {
        "exchange": site.names.exchange,
        "routingKey": "lab.graded",
    }
    site.upload(task["filePath"])
    site.publish(task)
    browser.get(site.url + "/")

    def highlighted(driver: webdriver.Chrome) -> bool:
        return task["taskId"] in texts(driver, "#stuck.alarm tr.row-stuck .task-link")

    wait_until(browser, highlighted, "the stuck task highlighted on the live overview", 40)
    assert int(texts(browser, ".card-stuck .count")[0]) >= 1
    assert texts(browser, ".card-stuck.alarm")


def test_the_owner_page_lists_submissions_with_the_grade_sheet(
    browser: webdriver.Chrome, site: Site, demo: dict[str, str], shoot: Shoot
) -> None:
    browser.get(f"{site.url}/owners/student-42")
    listed = row_states(browser)
    assert set(demo.values()) <= set(listed)
    status, sheet = grade_sheet(browser)
    assert status == 200
    assert demo["crash"] in sheet


def test_an_unknown_task_gets_a_page_that_says_so(
    browser: webdriver.Chrome, site: Site, shoot: Shoot
) -> None:
    browser.get(site.url + path_of("no/such?task#here"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not found"
    assert "no/such?task#here" in browser.find_element(By.CSS_SELECTOR, ".not-found").text
    status = browser.execute_script(
        "return performance.getEntriesByType('navigation')[0].responseStatus;"
    )
    assert status == 404


SCRIPT = "<script>alert('xss-script')</script>"
IMG = '"><img src=x onerror="alert(\'xss-img\')">'


def no_injection(driver: webdriver.Chrome) -> None:
    """Nothing from a task ran or became an element on the page."""
    try:
        alert = driver.switch_to.alert
        text = alert.text
        alert.dismiss()
        pytest.fail(f"a value from a task ran: alert({text!r})")
    except NoAlertPresentException:
        pass
    assert driver.execute_script("return document.querySelectorAll('img').length;") == 0
    sources = driver.execute_script("return [...document.scripts].map(s => s.getAttribute('src'));")
    assert all(src and src.startswith("/static/") for src in sources), sources


def test_values_from_tasks_are_shown_as_text_and_never_run(
    browser: webdriver.Chrome, site: Site, shoot: Shoot
) -> None:
    task_id = f"{site.prefix}-{SCRIPT}{IMG}"
    owner = f"owner-{IMG}{SCRIPT}"
    # A missing file whose path holds both: the download crash's detail repeats it.
    path = f"/{site.prefix}/{SCRIPT}{IMG}.zip"
    task = {**site.chain(task_id, stages=1), "taskOwnerId": owner, "filePath": path}
    site.publish(task)

    browser.get(site.url + path_of(task_id))

    def crashed(driver: webdriver.Chrome) -> bool:
        driver.refresh()
        return bool(driver.find_elements(By.CSS_SELECTOR, ".crash-detail"))

    wait_until(browser, crashed, "the evil task's crash", 40)
    no_injection(browser)
    assert browser.find_element(By.CSS_SELECTOR, "h1 .task-id").text == task_id
    assert SCRIPT in browser.find_element(By.CSS_SELECTOR, ".crash-detail").text
    assert browser.find_element(By.CSS_SELECTOR, ".facts a").text == owner
    shoot("journey")

    browser.find_element(By.ID, "load-output").click()
    wait_until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#output-files details"), "x")
    no_injection(browser)

    for page in (
        "/",
        f"/tasks?q={quote(site.prefix)}",
        f"/tasks?q={quote(SCRIPT)}&owner={quote(owner)}",
        f"/owners/{quote(owner, safe='')}",
        path_of(f"{SCRIPT}{IMG}-unknown"),
    ):
        browser.get(site.url + page)
        no_injection(browser)
        assert SCRIPT in browser.find_element(By.TAG_NAME, "body").text or page == "/"
        shoot(page.strip("/").split("?")[0].split("/")[0] or "overview")
        if page.startswith("/owners/"):
            status, sheet = grade_sheet(browser)  # an owner id with `/` in it has one too
            assert status == 200
            assert SCRIPT in sheet
