"""A big tracker database, fast: N tasks with 7 notices each, every row the store's own.

Each task's 7 notice bodies (one stage visit: received … acked, ending passed, failed, or
forwarded to a next stage and so waiting, later stuck) are folded by the pure `journey`
exactly as the store folds them, and the rows are made by the store's own row builders
(`Store._task_row`, `_visit_rows`, the notice key); only the writing is a bulk path, in
chunks: multi-row INSERTs on SQLite, COPY on PostgreSQL. Tasks are spread over the last
week, owners `o0`…`o499`, stages `s0`…`s9`.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert

from ulos_py.journey import Notice, journey
from ulos_py.tracker.schema import notices, tasks, visits
from ulos_py.tracker.store import Store, _key, _visit_rows

CHUNK = 5000
OWNERS = 500
STAGES = 10
SPREAD = timedelta(days=7)
ENDINGS = ("pass", "fail", "forward")


def task_notices(n: int, count: int, now: datetime) -> list[Notice]:
    """Task n's seven notices, a few ms apart, at a time spread over the last week."""
    task_id, key = f"r-{n:07}", f"s{n % STAGES}"
    start = now - SPREAD * ((n * 7919 % count) / count)
    ending = ENDINGS[n % len(ENDINGS)]
    routing: dict[str, Any] = {"exchange": "lab", "routingKey": key}
    later = {"exchange": "lab", "routingKey": "report"}  # so the next stage is not the end
    nxt = {"exchange": "lab", "routingKey": f"s{(n + 1) % STAGES}", "successRoutingDecision": later}
    if ending == "forward":
        routing["successRoutingDecision"] = nxt
    events = ["received", "downloaded", "execution_started", "execution_finished", "uploaded"]
    events += ["forwarded" if ending == "forward" else "completed", "acked"]
    out = []
    for step, event in enumerate(events):
        body: dict[str, Any] = {
            "taskId": task_id,
            "taskOwnerId": f"o{n % OWNERS}",
            "filePath": f"/lab/{task_id}.zip",
            "timeout": 30,
            "routingTree": routing,
            "event": event,
            "nodeId": f"node-{n % 7}",
            "timestamp": (start + timedelta(milliseconds=40 * step)).isoformat(),
            "stage": {"exchange": "lab", "routingKey": key},
        }
        if event == "execution_finished":
            body["outcome"] = "fail" if ending == "fail" else "pass"
        if event == "forwarded":
            body["target"] = {"exchange": "lab", "routingKey": nxt["routingKey"]}
        out.append(Notice(body))
    return out


def rows(
    store: Store, start: int, stop: int, count: int, now: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """The notices, tasks and visits rows of tasks [start, stop)."""
    notice_rows, task_rows, visit_rows = [], [], []
    for n in range(start, stop):
        said = task_notices(n, count, now)
        view = journey(said[0].task_id or "", said)
        task_rows.append(store._task_row(view))
        visit_rows += _visit_rows(view)
        notice_rows += [
            {
                "key": _key(notice.identity.encode()),
                "task_id": view.task_id,
                "stored_at": now,
                "body": notice.identity,
            }
            for notice in said
        ]
    return notice_rows, task_rows, visit_rows


def chunks(count: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, CHUNK):
        yield start, min(start + CHUNK, count)


async def fill(url: str, count: int, now: datetime | None = None) -> None:
    """`count` tasks and 7 x `count` notices into the (migrated, empty) database at `url`."""
    now = now or datetime.now(UTC)
    store = await Store.open(url)
    try:
        for start, stop in chunks(count):
            notice_rows, task_rows, visit_rows = rows(store, start, stop, count, now)
            if store.engine.dialect.name == "postgresql":
                await _copy(store, notice_rows, task_rows, visit_rows)
                continue
            async with store.engine.begin() as conn:
                await conn.execute(insert(notices), notice_rows)
                await conn.execute(insert(tasks), task_rows)
                await conn.execute(insert(visits), visit_rows)
        if store.engine.dialect.name == "postgresql":
            # committed: ANALYZE in a transaction that rolls back leaves no statistics
            async with store.engine.begin() as conn:
                await conn.exec_driver_sql("ANALYZE")
    finally:
        await store.close()


async def _copy(store: Store, *tables: list[dict[str, Any]]) -> None:
    """COPY each table's rows through asyncpg (datetimes as they are: timestamptz)."""
    async with store.engine.begin() as conn:
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        for table, data in zip((notices, tasks, visits), tables, strict=True):
            columns = list(data[0])
            await driver.copy_records_to_table(
                table.name, records=[tuple(r[c] for c in columns) for r in data], columns=columns
            )
