"""What the dashboard's browser tests share: where screenshots go, and waiting on a page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.support.wait import WebDriverWait

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / ".run" / "screenshots"
Shoot = Callable[[str], Path]


def wait_until(
    driver: webdriver.Chrome,
    check: Callable[[webdriver.Chrome], Any],
    what: str,
    timeout: float = 30,
) -> Any:
    """Until `check(driver)` gives something true; fails naming `what`."""
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.2).until(check)
    except TimeoutException:
        pytest.fail(f"{what}: not within {timeout} s", pytrace=False)


def path_of(task_id: str) -> str:
    return f"/tasks/{quote(task_id, safe='')}"


def texts(driver: webdriver.Chrome, css: str) -> list[str]:
    """The text of every element matching `css`, read in one go."""
    found: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent.trim());",
        css,
    )
    return found


def mark_page(driver: webdriver.Chrome) -> None:
    """A value that only lives as long as this page: a reload would lose it."""
    driver.execute_script("window.__notReloaded = 'still here';")


def not_reloaded(driver: webdriver.Chrome) -> bool:
    return bool(driver.execute_script("return window.__notReloaded === 'still here';"))
