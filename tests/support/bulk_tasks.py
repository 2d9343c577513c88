"""Many stored tasks, fast: a few template tasks go through the store as real notices (so
their rows are the fold's), then their task and visit rows are copied under new ids, owners
and times with bulk inserts. The copies are spread over the last week, newest first, so the
last hour holds about 1/168 of them, as in a lab that runs all week.

The copies' journey JSON keeps the templates' step times (only the columns the list, the
overview and the statistics read are moved in time); they exist to measure, not to open.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, select

from ulos_py.tracker.schema import tasks, visits
from ulos_py.tracker.store import Incoming, Store

SPREAD = timedelta(days=7)
CHUNK = 5000


def _notices(task_id: str, keys: list[str], end: str, now: datetime) -> list[dict[str, Any]]:
    """What nodes report for a task through `keys`; `end`: pass, fail or crash at the last."""
    said: list[dict[str, Any]] = []
    clock = now - timedelta(minutes=5)

    def say(key: str, event: str, routing: dict[str, Any], **fields: Any) -> None:
        nonlocal clock
        clock += timedelta(milliseconds=350)
        said.append(
            {
                "taskId": task_id,
                "taskOwnerId": "template",
                "filePath": f"/lab/{task_id}.zip",
                "timeout": 30,
                "routingTree": routing,
                "event": event,
                "nodeId": f"node-{key}",
                "timestamp": clock.isoformat(),
                "stage": {"exchange": "lab", "routingKey": key},
                **fields,
            }
        )

    for index, key in enumerate(keys):
        last = index == len(keys) - 1
        after = keys[index + 1] if not last else ("lab.passed" if end == "pass" else "lab.failed")
        routing = {"exchange": "lab", "routingKey": key}
        target = {"exchange": "lab", "routingKey": after}
        routing[
            "successRoutingDecision" if end == "pass" or not last else "failureRoutingDecision"
        ] = target
        for event in ("received", "downloaded", "execution_started"):
            say(key, event, routing)
        if last and end == "crash":
            say(key, "crashed", routing, error={"kind": "execution", "detail": "it broke"})
            say(key, "rejected", routing)
            break
        say(
            key, "execution_finished", routing, outcome="fail" if last and end == "fail" else "pass"
        )
        say(key, "uploaded", routing)
        say(key, "forwarded", routing, target=target)
        say(key, "acked", routing)
    return said


TEMPLATES = {
    "tpl-pass": (["python-check", "pytest-grader"], "pass"),
    "tpl-fail": (["python-check", "pytest-grader"], "fail"),
    "tpl-crash": (["gcode-check"], "crash"),
    "tpl-short": (["python-check"], "pass"),
}


async def fill(database: str, count: int, now: datetime | None = None) -> None:
    """`count` finished tasks in the tracker database at `database` (migrated here)."""
    now = now or datetime.now(UTC)
    store = await Store.open(database)
    try:
        bodies = [
            body
            for task_id, (keys, end) in TEMPLATES.items()
            for body in _notices(task_id, keys, end, now)
        ]
        await store.add([Incoming(json.dumps(body).encode()) for body in bodies])
        async with store.engine.begin() as conn:
            task_rows = [dict(row._mapping) for row in await conn.execute(select(tasks))]
            visit_rows = [dict(row._mapping) for row in await conn.execute(select(visits))]
            by_task: dict[str, list[dict[str, Any]]] = {}
            for row in visit_rows:
                by_task.setdefault(row["task_id"], []).append(row)
            for start in range(0, count, CHUNK):
                new_tasks, new_visits = [], []
                for n in range(start, min(start + CHUNK, count)):
                    template = task_rows[n % len(task_rows)]
                    moved = now - SPREAD * (n / count) - template["updated_at"]
                    task_id = f"bulk-{n:06d}"
                    new_tasks.append(
                        {
                            **template,
                            "task_id": task_id,
                            "owner": f"student-{n % 5000:04d}",
                            "file_path": f"/lab/week/{task_id}.zip",
                            "first_seen": template["first_seen"] + moved,
                            "updated_at": template["updated_at"] + moved,
                        }
                    )
                    for row in by_task[template["task_id"]]:
                        new_visits.append(
                            {
                                **row,
                                "task_id": task_id,
                                "started_at": row["started_at"] + moved,
                                "last_at": row["last_at"] + moved,
                            }
                        )
                await conn.execute(insert(tasks), new_tasks)
                await conn.execute(insert(visits), new_visits)
    finally:
        await store.close()
