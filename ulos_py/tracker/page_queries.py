"""The few reads only the dashboard needs, beside the tracker's own queries (`queries.py`):
how many tasks are in each state now, finished visits per stage and minute, and the routing
tree a task started with. One code path for SQLite and PostgreSQL, like the store's.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import String, case, func, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.expression import FunctionElement

from ulos_py.journey import State
from ulos_py.tracker import stuck
from ulos_py.tracker.schema import notices, tasks, visits
from ulos_py.tracker.store import Store
from ulos_py.tracker.stuck import Clock

LONGEST_VISIT = timedelta(hours=1)
"""The throughput chart reads visits that began at most this long before its window."""


class minute_of(FunctionElement[str]):
    """The minute a time falls in, as `YYYY-MM-DDTHH:MM` text, in each database's dialect."""

    type = String()
    inherit_cache = True


@compiles(minute_of, "sqlite")
def _minute_sqlite(element: minute_of, compiler: Any, **kw: Any) -> str:
    return f"strftime('%Y-%m-%dT%H:%M', {compiler.process(element.clauses, **kw)})"


@compiles(minute_of, "postgresql")
def _minute_postgresql(element: minute_of, compiler: Any, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI')"


async def state_counts(store: Store, now: datetime | None = None) -> dict[str, int]:
    """Tasks in each state right now, `stuck` counted apart from the open states it came from
    (every state is listed, zero or not, so the overview's cards do not jump about).

    Index-only reads: the states, then the stuck ones of each open state by their range
    (`stuck.py`; a GROUP BY there would make SQLite walk the state index and read every row
    instead)."""
    clock = Clock(now or datetime.now(UTC), store.stuck_after)
    found: dict[str, int] = {state.value: 0 for state in State}
    stuck_now = {
        State.WAITING: stuck.waiting_stuck(clock),
        State.RUNNING: stuck.running_stuck(clock),
    }
    async with store.engine.connect() as conn:
        for state, count in await conn.execute(
            select(tasks.c.state, func.count()).group_by(tasks.c.state)
        ):
            found[str(state)] = found.get(str(state), 0) + int(count)
        for open_state, clause in stuck_now.items():
            count = (await conn.execute(select(func.count()).where(clause))).scalar_one()
            found[open_state.value] -= int(count)
            found[State.STUCK.value] += int(count)
    return found


async def throughput(
    store: Store, minutes: int = 60, now: datetime | None = None
) -> dict[str, list[int]]:
    """Visits that ended (an outcome or a crash) per stage and minute, oldest minute first,
    over the last `minutes` minutes including the current one.

    Read through the index of when visits began: a visit that ran for longer than
    `LONGEST_VISIT` before it ended is left out of the chart."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    first = now.replace(second=0, microsecond=0) - timedelta(minutes=minutes - 1)
    bucket = minute_of(visits.c.last_at)
    query = (
        select(visits.c.stage_key, bucket, func.count())
        .where(
            visits.c.started_at >= first - LONGEST_VISIT,
            visits.c.last_at >= first,
            or_(visits.c.outcome.is_not(None), visits.c.crash_kind.is_not(None)),
        )
        .group_by(visits.c.stage_key, bucket)
    )
    slots = {(first + timedelta(minutes=i)).strftime("%Y-%m-%dT%H:%M"): i for i in range(minutes)}
    series: dict[str, list[int]] = defaultdict(lambda: [0] * minutes)
    async with store.engine.connect() as conn:
        for stage_key, minute, count in await conn.execute(query):
            if minute in slots:
                series[stage_key or "(no stage)"][slots[minute]] += int(count)
    return dict(series)


async def node_activity(
    store: Store, window: timedelta = timedelta(hours=1), now: datetime | None = None
) -> list[dict[str, Any]]:
    """Every node seen, busiest first: its last activity, and the visits it handled and the
    crashes it reported over the last `window` (read through the index of when visits began,
    so the overview stays fast however long the history; a node idle for longer than the
    window is listed with no last activity)."""
    since = (now or datetime.now(UTC)) - window
    crashed = func.sum(case((visits.c.crash_kind.is_not(None), 1), else_=0))
    # Grouped by an expression, not the column: grouping by node_id would make SQLite walk
    # that index over the whole history instead of the range of when visits began.
    node_key = func.coalesce(visits.c.node_id, "")
    recent = (
        select(node_key, func.max(visits.c.last_at), func.count(), crashed)
        .where(visits.c.started_at >= since)
        .group_by(node_key)
    )
    every = select(visits.c.node_id).where(visits.c.node_id.is_not(None)).distinct()
    async with store.engine.connect() as conn:
        active = {
            node: (last, count, int(crashes))
            for node, last, count, crashes in await conn.execute(recent)
            if node
        }
        idle = [node for (node,) in await conn.execute(every) if node not in active]
    listed = [
        {"nodeId": node, "lastSeen": _rfc3339(last), "visits": count, "crashes": crashes}
        for node, (last, count, crashes) in sorted(active.items())
    ]
    return listed + [
        {"nodeId": node, "lastSeen": None, "visits": 0, "crashes": 0} for node in sorted(idle)
    ]


def _rfc3339(when: datetime | None) -> str | None:
    if when is None:
        return None
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def routing_tree(store: Store, task_id: str) -> dict[str, Any] | None:
    """The routing tree the task started with: the one its earliest notice carried (every
    notice carries the tree from its stage on, so the first stage's is the whole tree)."""
    query = select(notices.c.body).where(notices.c.task_id == task_id)
    best: tuple[str, int, dict[str, Any]] | None = None
    async with store.engine.connect() as conn:
        for (body,) in await conn.execute(query):
            notice = json.loads(body)
            tree = notice.get("routingTree") if isinstance(notice, dict) else None
            if not isinstance(tree, dict):
                continue
            when = notice.get("timestamp")
            rank = (when if isinstance(when, str) else "~", -len(body), tree)
            if best is None or rank[:2] < best[:2]:
                best = rank
    return best[2] if best is not None else None
