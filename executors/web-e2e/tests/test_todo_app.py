"""Lab 4, "a todo list in the browser": the instructor's browser tests.

The page (index.html) has a form `#new-todo` with a text field `#todo-text`, a list
`#todo-list` with one `<li>` per item (a checkbox and the text), and `#counter` saying
how many items are not done ("1 item left", "2 items left").
"""

from __future__ import annotations

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

WAIT = 5  # seconds a page may take to show a change


def add(browser: WebDriver, text: str) -> None:
    field = browser.find_element(By.ID, "todo-text")
    field.clear()
    field.send_keys(text)
    browser.find_element(By.CSS_SELECTOR, "#new-todo button[type=submit]").click()


def items(browser: WebDriver) -> list[str]:
    return [li.text.strip() for li in browser.find_elements(By.CSS_SELECTOR, "#todo-list li")]


def counter_says(browser: WebDriver, text: str) -> bool:
    try:
        WebDriverWait(browser, WAIT).until(
            lambda b: b.find_element(By.ID, "counter").text.strip() == text
        )
    except Exception:
        return False
    return True


def test_start_page_shows_an_empty_list(browser: WebDriver) -> None:
    assert browser.title == "Lab todo list"
    assert items(browser) == []
    assert counter_says(browser, "0 items left"), browser.find_element(By.ID, "counter").text


def test_added_items_are_listed_in_order(browser: WebDriver) -> None:
    add(browser, "buy milk")
    add(browser, "write the lab report")
    add(browser, "   ")  # blank text adds nothing

    WebDriverWait(browser, WAIT).until(lambda b: len(items(b)) >= 2)
    assert items(browser) == ["buy milk", "write the lab report"]
    assert browser.find_element(By.ID, "todo-text").get_attribute("value") == ""
    assert counter_says(browser, "2 items left"), browser.find_element(By.ID, "counter").text


def test_a_done_item_is_struck_and_not_counted(browser: WebDriver) -> None:
    add(browser, "buy milk")
    add(browser, "write the lab report")
    WebDriverWait(browser, WAIT).until(lambda b: len(items(b)) == 2)

    browser.find_element(By.CSS_SELECTOR, "#todo-list li input[type=checkbox]").click()

    first = browser.find_elements(By.CSS_SELECTOR, "#todo-list li")[0]  # the list may re-render
    assert "done" in (first.get_attribute("class") or "").split()
    assert counter_says(browser, "1 item left"), browser.find_element(By.ID, "counter").text
