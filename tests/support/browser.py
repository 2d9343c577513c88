"""What the dashboard's browser tests share: where screenshots go, and waiting on a page."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

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
