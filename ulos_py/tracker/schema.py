"""The tracker's tables, one definition for SQLite and PostgreSQL (the migrations follow it).

`notices` is the record: every notice body once (its key is the hash of its canonical body,
so a redelivered copy is stored once). `tasks` and `visits` are derived from it by the
journey fold after every batch, and are what the queries read. The text search's trigram
index is each database's own kind of object and lives in migration 0004 alone (`search.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Dialect,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.types import TypeDecorator


class UtcDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in and out: SQLite keeps no zone, so it stores naive UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def bind_processor(self, dialect: Dialect) -> Callable[[datetime | None], Any] | None:
        """On SQLite, SQLAlchemy's DATETIME text (`YYYY-MM-DD HH:MM:SS.ffffff`) in one step:
        its processor formats each field through a dict, 3 times as long, and the tracker
        binds 7 times per task it derives."""
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)

        def process(value: datetime | None) -> str | None:
            if value is None:
                return None
            return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

        return process

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


Id = BigInteger().with_variant(Integer(), "sqlite")  # SQLite autoincrements INTEGER only

UNTIMED = "state = 'waiting' AND stuck_at IS NULL"

metadata = MetaData()

notices = Table(
    "notices",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("task_id", Text, nullable=True, index=True),
    Column("stored_at", UtcDateTime, nullable=False),
    Column("body", Text, nullable=False),
)

unreadable = Table(
    "unreadable",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("key", String(64), nullable=False, unique=True),
    Column("stored_at", UtcDateTime, nullable=False),
    Column("exchange", Text, nullable=False),
    Column("routing_key", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
)

tasks = Table(
    "tasks",
    metadata,
    Column("task_id", Text, primary_key=True),
    Column("owner", Text, nullable=True),
    Column("file_path", Text, nullable=True),
    Column("state", String(16), nullable=False),
    Column("stage_exchange", Text, nullable=True),
    Column("stage_key", Text, nullable=True),
    Column("first_seen", UtcDateTime, nullable=True),
    Column("updated_at", UtcDateTime, nullable=False),
    Column("stuck_at", UtcDateTime, nullable=True),
    Column("visits", Text, nullable=False),
    Index("tasks_newest", "updated_at", "task_id"),
    # The list's filters, each followed by its order: a page is one walk of an index.
    Index("tasks_owner_newest", "owner", "updated_at", "task_id"),
    # `stuck_at` last: the open states' pages and counts test it without reading rows.
    Index("tasks_state_newest", "state", "updated_at", "task_id", "stuck_at"),
    Index("tasks_stage_key_newest", "stage_key", "updated_at", "task_id"),
    # Running tasks by when they become stuck (stuck.py).
    Index("tasks_state_stuck", "state", "stuck_at"),
    # Waiting tasks without a time, which never become stuck: few if any.
    Index(
        "tasks_waiting_untimed",
        "updated_at",
        "task_id",
        sqlite_where=text(UNTIMED),
        postgresql_where=text(UNTIMED),
    ),
)

visits = Table(
    "visits",
    metadata,
    Column("task_id", Text, primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("stage_exchange", Text, nullable=True),
    Column("stage_key", Text, nullable=True),
    Column("node_id", Text, nullable=True, index=True),
    Column("attempt", Integer, nullable=False),
    Column("started_at", UtcDateTime, nullable=True, index=True),
    Column("last_at", UtcDateTime, nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("crash_kind", String(32), nullable=True),
    Column("seconds", Float, nullable=True),
    Column("durations", Text, nullable=False),
)
