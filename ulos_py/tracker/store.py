"""The tracker's database: one code path over SQLite (aiosqlite) and PostgreSQL (asyncpg).

Writing is `add`: one transaction stores a batch of notices (each once, by the hash of its
canonical body) and re-derives the journey of every task they touch from all of that task's
notices, so the stored journey is the pure fold's, whatever order the notices came in. A task's
notices and its row are written in the same transaction (and purged together), so a task
without a row has no notices but the batch's: those are not read back. Only the task rows that
changed are written (updated in place, so the text index's triggers fire only when a
searched column changed), and their visits. Reading is the queries in `queries.py`. The schema
is migrated with Alembic at `open`.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from alembic import command
from alembic.config import Config
from sqlalchemy import Connection, bindparam, delete, event, insert, select, text, type_coerce
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.types import NullType

from ulos_py.errors import ConfigError
from ulos_py.journey import Crashed, Journey, Notice, State, journey, read_notice
from ulos_py.tracker.prepared import Prepared
from ulos_py.tracker.schema import notices, tasks, unreadable, visits

DEFAULT_DATABASE = "sqlite:///ulos-tracker.sqlite3"
NOTICE_COLUMNS = ("key", "task_id", "stored_at", "body")
TASK_COLUMNS = tuple(column.name for column in tasks.c)
TASK_FIELDS = tuple(name for name in TASK_COLUMNS if name != "task_id")
VISIT_COLUMNS = tuple(column.name for column in visits.c)
STORED_TASKS = select(*(type_coerce(tasks.c[name], NullType()) for name in TASK_COLUMNS)).where(
    tasks.c.task_id.in_(bindparam("ids", expanding=True))
)
"""Task rows as the driver gives them back (no type parses them), in TASK_COLUMNS order: what
`Prepared.bind` makes of a derived row, to compare with."""
STORED_NOTICES = select(notices.c.task_id, notices.c.key, notices.c.body).where(
    notices.c.task_id.in_(bindparam("ids", expanding=True))
)
FINAL_STATES = frozenset(
    {State.PASSED, State.FAILED, State.CRASHED, State.CANCELLED, State.DELIVERED}
)
"""States a task leaves no more (but for a delivered one taken later): the retention's."""


class Message(Protocol):
    """What the store needs of a message from the tracker's queue."""

    @property
    def body(self) -> bytes: ...
    @property
    def exchange(self) -> str: ...
    @property
    def routing_key(self) -> str: ...


@dataclass(frozen=True)
class Incoming:
    """One message from the tracker's queue: where it came from and its body untouched."""

    body: bytes
    exchange: str = ""
    routing_key: str = ""


def async_url(url: str) -> str:
    """The URL with the async driver: `sqlite:///f` → aiosqlite, `postgresql://` → asyncpg."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"ULOS_TRACKER_DATABASE: not a database URL: {exc}") from exc
    drivers = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}
    backend = parsed.get_backend_name()
    if backend not in drivers:
        raise ConfigError(
            f"ULOS_TRACKER_DATABASE: {backend!r} is not supported (sqlite:///FILE or "
            "postgresql://USER:PASSWORD@HOST/DB)"
        )
    return parsed.set(drivername=drivers[backend]).render_as_string(hide_password=False)


def _migrate(connection: Connection) -> None:
    config = Config()
    config.set_main_option("script_location", "ulos_py.tracker:migrations")
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


def _on_sqlite_connect(dbapi_connection: Any, _record: object) -> None:
    """WAL lets the API read while the ingest writes; a busy wait instead of 'locked'."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class Store:
    """The tracker's database, open and migrated."""

    def __init__(self, engine: AsyncEngine, stuck_after: timedelta) -> None:
        self.engine = engine
        self.stuck_after = stuck_after
        dialect = engine.dialect
        self._new_notices = Prepared(
            self._insert_new(notices, "key"), notices, NOTICE_COLUMNS, dialect
        )
        self._new_tasks = Prepared(insert(tasks), tasks, TASK_COLUMNS, dialect)
        self._changed_tasks = Prepared(self._upsert_tasks(), tasks, TASK_COLUMNS, dialect)
        self._new_visits = Prepared(insert(visits), visits, VISIT_COLUMNS, dialect)

    @classmethod
    async def open(
        cls, url: str, stuck_after: timedelta = timedelta(minutes=10), migrate: bool = True
    ) -> Store:
        """Connect and bring the schema up to date (Alembic, in one transaction). The writing
        process of a tracker that migrated already passes `migrate=False`: it connects at
        its first write, so a database that is down then fails a batch, not its start."""
        driver_url = async_url(url)
        # A file has no server that could drop a pooled connection: no ping on each checkout.
        engine = create_async_engine(driver_url, pool_pre_ping=driver_url.startswith("postgres"))
        if engine.dialect.name == "sqlite":
            event.listen(engine.sync_engine, "connect", _on_sqlite_connect)
        store = cls(engine, stuck_after)
        try:
            if migrate:
                async with engine.begin() as conn:
                    await conn.run_sync(_migrate)
                await store.analyze()
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise ConfigError(f"ULOS_TRACKER_DATABASE: cannot open or migrate: {exc}") from exc
        return store

    async def analyze(self) -> None:
        """Refresh SQLite's statistics of the tasks table (0.13 s at 100 000 tasks), so its
        planner walks the most selective list index (an owner's, not a state's: 0.2 ms
        instead of 300). PostgreSQL's autovacuum keeps its own statistics."""
        if self.engine.dialect.name == "sqlite":
            async with self.engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE tasks")

    async def close(self) -> None:
        await self.engine.dispose()

    async def reset(self) -> None:
        """Drop pooled connections: the next transaction opens a fresh one."""
        await self.engine.dispose()

    async def add(self, batch: Sequence[Message]) -> list[Journey]:
        """Store a batch in one transaction; the journeys of the tasks it touched."""
        now = datetime.now(UTC)
        found: dict[str, Notice] = {}
        odd: list[dict[str, Any]] = []
        for message in batch:
            notice = read_notice(message.body)
            key = _notice_key(notice) if notice is not None else None
            if notice is None or key is None:
                odd.append(_unreadable_row(message, now))
            else:
                found[key] = notice
        async with self.engine.begin() as conn:
            if found:
                stamp = self._new_notices.bound("stored_at", now)
                rows = [(k, n.task_id, stamp, n.identity) for k, n in found.items()]
                await self._new_notices.run_tuples(conn, rows)
            if odd:
                await conn.execute(self._insert_new(unreadable, "key"), odd)
            touched = sorted({n.task_id for n in found.values() if n.task_id is not None})
            return await self._derive(conn, touched, found) if touched else []

    def _dialect_insert(self, table: Any) -> Any:
        """The database's own INSERT, which knows ON CONFLICT."""
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        return dialect.insert(table)

    def _insert_new(self, table: Any, key: str) -> Any:
        """An INSERT that skips rows whose key is already stored (a redelivered notice)."""
        return self._dialect_insert(table).on_conflict_do_nothing(index_elements=[key])

    def _upsert_tasks(self) -> Any:
        """The UPDATE of a changed task row, as an upsert: a row purged meanwhile (on
        PostgreSQL, between this batch's read and its write) is written again, so the task's
        notices, the late one included, keep a row and are read back with the next."""
        upsert = self._dialect_insert(tasks)
        changed = {name: upsert.excluded[name] for name in TASK_FIELDS}
        return upsert.on_conflict_do_update(index_elements=["task_id"], set_=changed)

    async def _derive(
        self, conn: AsyncConnection, task_ids: list[str], known: dict[str, Notice]
    ) -> list[Journey]:
        """Fold each task's notices again and write its task row and visits where they
        changed (the notices of this batch, `known` by key, are not parsed twice; those
        stored before are read only for the tasks that have a row)."""
        rows = await conn.execute(STORED_TASKS, {"ids": task_ids})
        stored: dict[Any, tuple[Any, ...]] = {row[0]: tuple(row) for row in rows}
        bodies: dict[str, list[Notice]] = defaultdict(list)
        for notice in known.values():
            if notice.task_id is not None:
                bodies[notice.task_id].append(notice)
        if stored:
            for task_id, key, body in await conn.execute(STORED_NOTICES, {"ids": list(stored)}):
                if key not in known:
                    bodies[task_id].append(Notice.stored(body))
        journeys = [journey(task_id, bodies[task_id]) for task_id in task_ids]
        new: list[tuple[Any, ...]] = []
        changed: list[tuple[Any, ...]] = []
        visit_rows: list[dict[str, Any]] = []
        for view in journeys:
            # Compared as the driver takes and gives them: the stored values are not parsed.
            row = self._new_tasks.bind(self._task_row(view))
            before = stored.get(view.task_id)
            if before is None:
                new.append(row)
            elif before != row:
                changed.append(row)
            else:
                continue
            visit_rows += _visit_rows(view)
        if changed:
            ids = [row[0] for row in changed]
            await conn.execute(delete(visits).where(visits.c.task_id.in_(ids)))
            await self._changed_tasks.run_tuples(conn, changed)
        await self._new_tasks.run_tuples(conn, new)
        await self._new_visits.run(conn, visit_rows)
        return journeys

    def _task_row(self, view: Journey) -> dict[str, Any]:
        stage = view.stage
        return {
            "task_id": view.task_id,
            "owner": view.owner,
            "file_path": view.file_path,
            "state": view.state().value,
            "stage_exchange": stage.exchange if stage else None,
            "stage_key": stage.routing_key if stage else None,
            "first_seen": view.first_seen,
            "updated_at": view.updated_at or datetime.now(UTC),
            "stuck_at": view.stuck_at(self.stuck_after),
            "visits": json.dumps([visit.as_dict() for visit in view.visits]),
        }

    async def writable(self) -> bool:
        """Whether a write transaction goes through now (for /healthz)."""
        try:
            async with self.engine.begin() as conn:
                await conn.execute(delete(unreadable).where(unreadable.c.id == -1))
        except (SQLAlchemyError, OSError):
            return False
        return True

    async def purge(self, retention: timedelta, now: datetime | None = None) -> int:
        """Forget finished tasks last changed before the retention window; how many."""
        cutoff = (now or datetime.now(UTC)) - retention
        old = select(tasks.c.task_id).where(
            tasks.c.updated_at < cutoff, tasks.c.state.in_([s.value for s in FINAL_STATES])
        )
        async with self.engine.begin() as conn:
            ids = [row[0] for row in await conn.execute(old)]
            for chunk in _chunks(ids, 500):
                await conn.execute(delete(notices).where(notices.c.task_id.in_(chunk)))
                await conn.execute(delete(visits).where(visits.c.task_id.in_(chunk)))
                await conn.execute(delete(tasks).where(tasks.c.task_id.in_(chunk)))
        return len(ids)

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))


def _notice_key(notice: Notice) -> str | None:
    """The hash of a notice's canonical body; None for a body no database can hold as text
    (a lone UTF-16 surrogate, which JSON may escape): kept as unreadable instead."""
    try:
        return _key(notice.identity.encode())
    except UnicodeEncodeError:
        return None


def _key(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _unreadable_row(message: Message, now: datetime) -> dict[str, Any]:
    return {
        "key": _key(message.body),
        "stored_at": now,
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "body": message.body,
    }


def _visit_rows(view: Journey) -> Iterable[dict[str, Any]]:
    for seq, visit in enumerate(view.visits):
        crash = visit.end if isinstance(visit.end, Crashed) else None
        last = visit.steps[-1][1] if visit.steps else None
        started = visit.started
        yield {
            "task_id": view.task_id,
            "seq": seq,
            "stage_exchange": visit.stage.exchange if visit.stage else None,
            "stage_key": visit.stage.routing_key if visit.stage else None,
            "node_id": visit.node_id,
            "attempt": visit.attempt,
            "started_at": started,
            "last_at": last,
            "outcome": visit.outcome,
            "crash_kind": crash.kind if crash else None,
            "seconds": (last - started).total_seconds() if last and started else None,
            "durations": json.dumps(visit.durations()),
        }


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
