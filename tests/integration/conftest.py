"""Fixtures of the tracker's store tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from ulos_py.tracker.store import Store

STUCK_AFTER = timedelta(minutes=5)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    """A migrated tracker store, empty, on each database (a test file may define its own)."""
    opened = await Store.open(database_url, stuck_after=STUCK_AFTER)
    try:
        yield opened
    finally:
        await opened.close()
