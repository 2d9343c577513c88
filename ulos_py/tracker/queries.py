"""What the tracker answers, read from the derived tables: one place for every query, so the
HTTP layer only parses and formats (and the queries are tested alone, on both databases).

`stuck` is the one state that depends on the clock: a row keeps its state without the clock,
and every query decides `stuck` with `stuck.py` at the moment it answers for.
"""

from __future__ import annotations

import base64
import binascii
import json
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    case,
    func,
    literal,
    select,
    true,
    tuple_,
    union_all,
)

from ulos_py.errors import UlosError
from ulos_py.journey import CANCELLED_KIND, Cancelled, State, cancel_fields
from ulos_py.tracker import search, stuck
from ulos_py.tracker.schema import UtcDateTime, notices, tasks, unreadable, visits
from ulos_py.tracker.store import Store
from ulos_py.tracker.stuck import Clock

SUMMARY = [column for column in tasks.c if column.name != "visits"]
"""A task row but its visits (a list needs no journey)."""


class BadCursor(UlosError):
    """A pagination cursor this tracker did not hand out."""


@dataclass(frozen=True)
class TaskFilter:
    """The task list's filters; None means any."""

    owner: str | None = None
    state: State | None = None
    stage: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None


@dataclass(frozen=True)
class Page:
    items: list[dict[str, Any]]
    next: str | None


def _rfc3339(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def clock_of(store: Store, now: datetime | None = None) -> Clock:
    return Clock(now or datetime.now(UTC), store.stuck_after)


def _summary(row: Any, clock: Clock) -> dict[str, Any]:
    stage = (
        {"exchange": row.stage_exchange, "routingKey": row.stage_key}
        if row.stage_key is not None
        else None
    )
    return {
        "taskId": row.task_id,
        "taskOwnerId": row.owner,
        "filePath": row.file_path,
        "state": stuck.state_of(row, clock),
        "stage": stage,
        "firstSeen": _rfc3339(row.first_seen),
        "updatedAt": _rfc3339(row.updated_at),
    }


def _where(filters: TaskFilter) -> list[ColumnElement[bool]]:
    """Every filter but the state (see `list_query`)."""
    where: list[ColumnElement[bool]] = []
    if filters.owner is not None:
        where.append(tasks.c.owner == filters.owner)
    if filters.stage is not None:
        where.append(tasks.c.stage_key == filters.stage)
    if filters.since is not None:
        where.append(tasks.c.updated_at >= filters.since)
    if filters.until is not None:
        where.append(tasks.c.updated_at < filters.until)
    if filters.text:
        where.append(search.contains(filters.text))
    return where


def _cursor(row: Any) -> str:
    raw = json.dumps([row.updated_at.isoformat(), row.task_id]).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _after(cursor: str) -> ColumnElement[bool]:
    """Rows after the cursor's in page order, as one row-value comparison: the database
    seeks to it in the index instead of filtering every row before it."""
    try:
        when, task_id = json.loads(base64.urlsafe_b64decode(cursor.encode()))
        updated = datetime.fromisoformat(when)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise BadCursor(f"cursor {cursor!r} is not one this tracker gave") from exc
    newest = tuple_(tasks.c.updated_at, tasks.c.task_id)
    return newest < tuple_(literal(updated, UtcDateTime()), literal(str(task_id), Text()))


def list_query(
    filters: TaskFilter,
    clock: Clock,
    cursor: str | None = None,
    limit: int = 50,
    narrowed: ColumnElement[bool] | None = None,
) -> Select[Any]:
    """One page of the list, newest change first (each filter has an index in that order).

    A state that depends on the clock is a few disjoint index ranges (`stuck.parts`): the
    page is the newest `limit` of one page of each, so no part is walked past its page.
    `narrowed`: the few rows a text index found for the text (`search.narrowed`)."""
    where = _where(filters)
    if narrowed is not None:
        where.append(narrowed)
    if cursor is not None:
        where.append(_after(cursor))
    parts = stuck.parts(filters.state, clock) if filters.state is not None else [true()]
    pages = [_newest(select(*SUMMARY).where(*where, part)).limit(limit) for part in parts]
    if len(pages) == 1:
        return pages[0]
    merged = union_all(*(select(page.subquery()) for page in pages)).subquery()
    return select(merged).order_by(merged.c.updated_at.desc(), merged.c.task_id.desc()).limit(limit)


def _newest(query: Select[Any]) -> Select[Any]:
    return query.order_by(tasks.c.updated_at.desc(), tasks.c.task_id.desc())


async def task_list(
    store: Store,
    filters: TaskFilter,
    limit: int = 50,
    cursor: str | None = None,
    now: datetime | None = None,
) -> Page:
    """Tasks newest change first, `limit` at a time; `next` continues after the last."""
    clock = clock_of(store, now)
    async with store.engine.connect() as conn:
        narrowed = await search.narrowed(conn, filters.text) if filters.text else None
        query = list_query(filters, clock, cursor, limit + 1, narrowed)
        rows = list(await conn.execute(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return Page([_summary(row, clock) for row in rows], _cursor(rows[-1]) if more else None)


async def task_journey(
    store: Store, task_id: str, now: datetime | None = None
) -> dict[str, Any] | None:
    """One task's fields, state and visits (SPEC §10); None for an unknown task."""
    clock = clock_of(store, now)
    async with store.engine.connect() as conn:
        row = (await conn.execute(select(tasks).where(tasks.c.task_id == task_id))).first()
    if row is None:
        return None
    visits = json.loads(row.visits)
    return {**_summary(row, clock), **_cancelled(visits), "visits": visits}


def _cancelled(visits: list[dict[str, Any]]) -> dict[str, str | None]:
    """Who cancelled the task and why, from its last visit's crash (see `journey_dict`)."""
    crash = (visits[-1].get("crash") if visits else None) or {}
    if crash.get("kind") != CANCELLED_KIND:
        return cancel_fields(None)
    return cancel_fields(
        Cancelled(crash.get("cancelledBy"), crash.get("reason"), crash.get("cancelledAt"))
    )


def _quantiles(values: list[float]) -> dict[str, float]:
    if len(values) == 1:
        return {"p50": values[0], "p95": values[0]}
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return {"p50": cuts[9], "p95": cuts[18]}


@dataclass
class _StageTally:
    visits: int = 0
    outcomes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    crashes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    steps: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    finished: int = 0


async def stage_stats(store: Store, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """Per stage, over the visits begun in [since, until): counts by outcome and crash kind,
    p50/p95 seconds of each step (from the step before), and finished visits per minute."""
    query = select(visits).where(visits.c.started_at >= since, visits.c.started_at < until)
    tally: dict[tuple[str | None, str | None], _StageTally] = defaultdict(_StageTally)
    async with store.engine.connect() as conn:
        for row in await conn.execute(query):
            stage = tally[(row.stage_exchange, row.stage_key)]
            stage.visits += 1
            stage.outcomes[row.outcome or "none"] += 1
            if row.crash_kind is not None:
                stage.crashes[row.crash_kind] += 1
            if row.outcome is not None or row.crash_kind is not None:
                stage.finished += 1
            for step, seconds in json.loads(row.durations).items():
                stage.steps[step].append(seconds)
    minutes = max((until - since).total_seconds() / 60, 1e-9)
    return [
        {
            "stage": {"exchange": exchange, "routingKey": key} if key is not None else None,
            "visits": t.visits,
            "outcomes": dict(t.outcomes),
            "crashes": dict(t.crashes),
            "steps": {step: _quantiles(values) for step, values in t.steps.items()},
            "throughputPerMinute": t.finished / minutes,
        }
        for (exchange, key), t in sorted(tally.items(), key=lambda item: str(item[0]))
    ]


async def node_list(store: Store) -> list[dict[str, Any]]:
    """Every node seen: its last notice, the visits it handled and how many crashed."""
    crashed = func.sum(case((visits.c.crash_kind.is_not(None), 1), else_=0))
    query = (
        select(visits.c.node_id, func.max(visits.c.last_at), func.count(), crashed)
        .where(visits.c.node_id.is_not(None))
        .group_by(visits.c.node_id)
        .order_by(visits.c.node_id)
    )
    async with store.engine.connect() as conn:
        rows = list(await conn.execute(query))
    return [
        {"nodeId": node, "lastSeen": _rfc3339(last), "visits": count, "crashes": int(crashes)}
        for node, last, count, crashes in rows
    ]


async def stuck_tasks(
    store: Store, now: datetime | None = None, limit: int = 1000
) -> list[dict[str, Any]]:
    """Tasks stuck now, the longest stuck first: the oldest waiting ones and the running ones
    stuck longest, each an index range in that order, merged."""
    clock = clock_of(store, now)
    waiting = select(*SUMMARY).where(stuck.waiting_stuck(clock)).order_by(tasks.c.updated_at)
    running = select(*SUMMARY).where(stuck.running_stuck(clock)).order_by(tasks.c.stuck_at)
    async with store.engine.connect() as conn:
        rows = [row for q in (waiting, running) for row in await conn.execute(q.limit(limit))]
    since = {row.task_id: stuck.stuck_since(row, clock.stuck_after) for row in rows}
    rows.sort(key=lambda row: (since[row.task_id], row.task_id))
    return [
        {**_summary(row, clock), "stuckSince": _rfc3339(since[row.task_id])} for row in rows[:limit]
    ]


async def owner_tasks(store: Store, owner: str, now: datetime | None = None) -> list[Any]:
    """Every task of one owner, oldest first, with its visits (for the grade sheet)."""
    clock = clock_of(store, now)
    query = select(tasks).where(tasks.c.owner == owner).order_by(tasks.c.first_seen)
    async with store.engine.connect() as conn:
        rows = list(await conn.execute(query))
    return [{**_summary(row, clock), "visits": json.loads(row.visits)} for row in rows]


async def counts(store: Store) -> dict[str, int]:
    """How much is stored: notices, bodies that were not notices, and tasks."""
    async with store.engine.connect() as conn:
        stored = [
            (await conn.execute(select(func.count()).select_from(table))).scalar_one()
            for table in (notices, unreadable, tasks)
        ]
    return dict(zip(("notices", "unreadable", "tasks"), stored, strict=True))
