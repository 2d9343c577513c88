"""The tracker's UTC datetimes bound on SQLite as SQLAlchemy's own DATETIME text, in one step."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.dialects.sqlite import aiosqlite
from sqlalchemy.dialects.sqlite.base import DATETIME

from ulos_py.tracker.schema import UtcDateTime

DIALECT = aiosqlite.dialect()


@pytest.mark.parametrize(
    "value",
    [
        datetime(2025, 3, 1, 12, tzinfo=UTC),  # no microseconds: still written
        datetime(2025, 3, 1, 12, 0, 0, 1, tzinfo=timezone(timedelta(hours=-3))),
        datetime(999, 1, 1, tzinfo=UTC),
        datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        None,
    ],
)
def test_a_datetime_is_bound_as_sqlalchemys_sqlite_text(value: datetime | None) -> None:
    ours = UtcDateTime().dialect_impl(DIALECT).bind_processor(DIALECT)
    theirs = DATETIME().bind_processor(DIALECT)
    assert ours is not None and theirs is not None
    naive_utc = None if value is None else value.astimezone(UTC).replace(tzinfo=None)
    assert ours(value) == theirs(naive_utc)
