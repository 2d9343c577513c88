"""The tracker's store and queries, each test on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncConnection

from tests.support.journeys import T0, Node
from tests.support.postgres import Postgres
from ulos_py.journey import Notice, State, journey
from ulos_py.tracker import queries
from ulos_py.tracker.queries import TaskFilter
from ulos_py.tracker.schema import tasks, visits
from ulos_py.tracker.store import Incoming, Store, _visit_rows


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url, stuck_after=timedelta(minutes=5))
    try:
        yield opened
    finally:
        await opened.close()


def incoming(notices: list[Notice]) -> list[Incoming]:
    return [Incoming(json.dumps(n.body).encode(), "logs-exchange", "logs") for n in notices]


async def test_a_journey_is_stored_once_whatever_the_order_and_copies(store: Store) -> None:
    node = Node("t1")
    notices = [*node.stage(("a", "b")), *Node("t1", "n2", 50).stage(("b",), outcome="fail")]
    copies = [*notices, *notices[:4]]
    random.Random(7).shuffle(copies)
    for start in range(0, len(copies), 5):  # batches, in any order
        await store.add(incoming(copies[start : start + 5]))
    await store.add(incoming(notices))  # redelivered all over again
    assert (await queries.counts(store))["notices"] == len(notices)
    task = await queries.task_journey(store, "t1", now=T0)
    assert task is not None
    assert task["state"] == "failed"
    assert task["taskOwnerId"] == "alice"
    assert task["stage"] == {"exchange": "processing", "routingKey": "b"}
    assert [(v["stage"]["routingKey"], v["nodeId"], v["attempt"]) for v in task["visits"]] == [
        ("a", "n1", 1),
        ("b", "n2", 1),
    ]
    assert task["visits"][0]["forwardedTo"] == {"exchange": "processing", "routingKey": "b"}
    assert task["visits"][1]["outcome"] == "fail"
    assert task["visits"][0]["steps"]["received"] == "2025-03-01T12:00:00.001Z"
    assert await queries.task_journey(store, "nope") is None


async def test_a_body_that_is_not_a_notice_is_kept_and_counted(store: Store) -> None:
    odd = [Incoming(b"\xff not json", "crash-exchange", "crash"), Incoming(b"[1, 2]")]
    await store.add([*odd, odd[0], *incoming(Node("t1").stage(("a",)))])
    assert await queries.counts(store) == {"notices": 7, "unreadable": 2, "tasks": 1}


async def _tasks(store: Store, count: int) -> None:
    """`count` tasks of two owners, a millisecond of updates apart, alternately passing and
    failing, at stage a or b."""
    notices: list[Notice] = []
    for i in range(count):
        owner_node = Node(f"task-{i:03}", start=i * 20)
        stage = owner_node.stage(("a" if i % 2 else "b",), outcome="pass" if i % 3 else "fail")
        for notice in stage:
            notice.body["taskOwnerId"] = "bob" if i % 2 else "alice"
        notices.extend(stage)
    await store.add(incoming(notices))


async def test_the_list_pages_newest_first_with_a_cursor(store: Store) -> None:
    await _tasks(store, 25)
    seen: list[str] = []
    cursor = None
    while True:
        page = await queries.task_list(store, TaskFilter(), limit=10, cursor=cursor)
        seen += [item["taskId"] for item in page.items]
        if page.next is None:
            break
        cursor = page.next
    assert seen == [f"task-{i:03}" for i in reversed(range(25))]


async def test_a_list_page_on_sqlite_walks_an_index_in_page_order(tmp_path: Path) -> None:
    """No sort of every matching row: each filter has an index in the list's order, walked
    from the cursor on; a state that depends on the clock is a few such walks, each bounded
    by the time (only their one page each is sorted)."""
    store = await Store.open(f"sqlite:///{tmp_path / 'plans.sqlite3'}")
    try:
        await _tasks(store, 12)
        await store.analyze()
        cursor = (await queries.task_list(store, TaskFilter(), limit=2)).next
        filters = {
            "tasks_owner_newest": TaskFilter(owner="bob"),
            "tasks_state_newest": TaskFilter(state=State.FAILED),
            "tasks_stage_key_newest": TaskFilter(stage="a"),
        }
        bounded = {
            "tasks_state_newest (state=? AND updated_at>?": TaskFilter(state=State.WAITING),
            "tasks_state_newest (state=? AND updated_at<?": TaskFilter(state=State.STUCK),
        }
        clock = queries.clock_of(store, T0)
        async with store.engine.connect() as conn:

            async def plan(found: TaskFilter, cursor: str | None) -> str:
                compiled = queries.list_query(found, clock, cursor).compile(dialect=conn.dialect)
                params = [str(compiled.params[name]) for name in compiled.positiontup or []]
                rows = await conn.exec_driver_sql(
                    f"EXPLAIN QUERY PLAN {compiled.string}", tuple(params)
                )
                return " / ".join(str(row[3]) for row in rows)

            for index, found in filters.items():
                walk = await plan(found, cursor)
                assert f"USING INDEX {index}" in walk and "TEMP B-TREE" not in walk, walk
            for index, found in bounded.items():
                walk = await plan(found, None)
                assert f"USING INDEX {index}" in walk and "SCAN tasks" not in walk, walk
    finally:
        await store.close()


async def test_the_list_filters_by_owner_state_stage_time_and_text(store: Store) -> None:
    await _tasks(store, 12)

    async def ids(**given: object) -> set[str]:
        page = await queries.task_list(store, TaskFilter(**given), limit=100)  # type: ignore[arg-type]
        return {item["taskId"] for item in page.items}

    odd = {f"task-{i:03}" for i in range(12) if i % 2}
    assert await ids(owner="bob") == odd
    assert await ids(stage="a") == odd
    assert await ids(state=State.FAILED) == {f"task-{i:03}" for i in (0, 3, 6, 9)}
    assert await ids(text="TASK-01") == {"task-010", "task-011"}
    assert await ids(text="%") == set()  # a LIKE wildcard is only a character
    assert await ids(since=T0 + timedelta(milliseconds=200)) == {"task-010", "task-011"}
    assert await ids(until=T0 + timedelta(milliseconds=20)) == {"task-000"}


async def test_waiting_too_long_is_stuck_and_listed(store: Store) -> None:
    await store.add(incoming(Node("w").stage(("a", "b", "c"))))
    later = T0 + timedelta(minutes=6)
    task = await queries.task_journey(store, "w", now=later)
    assert task is not None
    assert task["state"] == "stuck"
    assert [t["taskId"] for t in await queries.stuck_tasks(store, now=later)] == ["w"]
    assert await queries.stuck_tasks(store, now=T0) == []
    stuck = await queries.task_list(store, TaskFilter(state=State.STUCK), now=later)
    waiting = await queries.task_list(store, TaskFilter(state=State.WAITING), now=later)
    assert ([i["taskId"] for i in stuck.items], waiting.items) == (["w"], [])


async def test_stats_give_counts_quantiles_and_throughput_per_stage(store: Store) -> None:
    await _tasks(store, 20)
    stats = await queries.stage_stats(store, T0, T0 + timedelta(minutes=1))
    by_key = {s["stage"]["routingKey"]: s for s in stats}
    assert by_key["a"]["visits"] == 10
    assert by_key["b"]["outcomes"] == {"fail": 4, "pass": 6}
    assert by_key["a"]["steps"]["downloaded"] == {"p50": 0.001, "p95": 0.001}
    assert by_key["a"]["throughputPerMinute"] == 10.0


async def test_nodes_count_visits_and_crashes(store: Store) -> None:
    node = Node("c", node_id="n9")
    error = {"kind": "execution", "detail": "boom"}
    await store.add(incoming([node.say("received", "a"), node.say("crashed", "a", error=error)]))
    await store.add(incoming(Node("p", node_id="n9", start=10).stage(("a",))))
    [seen] = await queries.node_list(store)
    assert (seen["nodeId"], seen["visits"], seen["crashes"]) == ("n9", 2, 1)
    assert seen["lastSeen"] == "2025-03-01T12:00:00.017Z"


async def test_retention_forgets_finished_tasks_only(store: Store) -> None:
    await store.add(incoming([*Node("done").stage(("a",)), *Node("open").stage(("a", "b", "c"))]))
    purged = await store.purge(timedelta(days=1), now=T0 + timedelta(days=2))
    assert purged == 1
    assert await queries.task_journey(store, "done") is None
    assert await queries.task_journey(store, "open") is not None
    assert (await queries.counts(store))["notices"] == 7


async def test_the_schema_migrates_once_and_opens_again(database_url: str) -> None:
    first = await Store.open(database_url)
    await first.add(incoming(Node("t").stage(("a",))))
    await first.close()
    again = await Store.open(database_url)
    try:
        assert (await queries.counts(again))["tasks"] == 1
        assert await again.writable()
    finally:
        await again.close()


WRITE_LOG = {
    "sqlite": [
        "CREATE TABLE writes (what TEXT)",
        *(
            f"CREATE TRIGGER log_{op.lower()}_{table} AFTER {op} ON {table} "
            f"BEGIN INSERT INTO writes VALUES ('{op} {table}'); END"
            for op in ("INSERT", "UPDATE", "DELETE")
            for table in ("tasks", "visits")
        ),
    ],
    "postgresql": [
        "CREATE TABLE writes (what TEXT)",
        "CREATE FUNCTION log_write() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO writes VALUES (TG_OP || ' ' || TG_TABLE_NAME); RETURN NULL; END $$",
        *(
            f"CREATE TRIGGER log_{table} AFTER INSERT OR UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION log_write()"
            for table in ("tasks", "visits")
        ),
    ],
}


async def _writes(store: Store) -> list[str]:
    """The row writes to tasks and visits since the last call, in order (then forgotten)."""
    async with store.engine.begin() as conn:
        done = [row[0] for row in await conn.exec_driver_sql("SELECT what FROM writes")]
        await conn.exec_driver_sql("DELETE FROM writes")
    return sorted(done)


async def test_a_task_row_and_its_visits_are_written_only_when_they_changed(
    store: Store,
) -> None:
    async with store.engine.begin() as conn:
        for statement in WRITE_LOG[store.engine.dialect.name]:
            await conn.exec_driver_sql(statement)
    first, other = Node("t1").stage(("a", "b", "c")), Node("t2").stage(("a",))
    await store.add(incoming([*first[:3], *other]))
    assert await _writes(store) == ["INSERT tasks"] * 2 + ["INSERT visits"] * 2
    # Redelivered, and a new notice that tells nothing new (a copy of a step with a field
    # the fold does not read): t1's row and visits are left alone; t2 changed.
    copy = Notice({**first[1].body, "logMessage": "downloaded again"})
    await store.add(incoming([*first[:3], copy, *Node("t2", start=50).stage(("a",))]))
    changed = ["DELETE visits", "INSERT visits", "INSERT visits", "UPDATE tasks"]
    assert await _writes(store) == changed
    assert (await queries.counts(store))["notices"] == 3 + 7 + 1 + 7
    await store.add(incoming(first[3:]))  # t1 went on to b
    assert await _writes(store) == ["DELETE visits", "INSERT visits", "UPDATE tasks"]
    task = await queries.task_journey(store, "t1", now=T0)
    assert task is not None
    assert (task["state"], task["stage"]["routingKey"]) == ("waiting", "b")
    assert list(task["visits"][0]["steps"]) == [n.body["event"] for n in first[:7]]  # no copy
    every = [n for n in (*first, copy, *other) if n.task_id == "t1"]
    assert await _stored_row(store, "t1") == store._task_row(journey("t1", every))


async def _stored_row(store: Store, task_id: str) -> dict[str, object]:
    async with store.engine.connect() as conn:
        query = select(tasks).where(tasks.c.task_id == task_id)
        return dict((await conn.execute(query)).one()._mapping)


async def test_a_notice_no_database_can_hold_as_text_is_kept_as_unreadable(
    store: Store,
) -> None:
    """JSON may escape a lone UTF-16 surrogate, which no UTF-8 text column takes."""
    odd = Incoming(b'{"taskId": "t9", "event": "received", "note": "\\ud800"}', "x", "logs")
    await store.add([odd, *incoming(Node("t1").stage(("a",)))])
    assert await queries.counts(store) == {"notices": 7, "unreadable": 1, "tasks": 1}


async def test_the_derived_tables_are_the_folds_of_every_notice_whatever_the_batches(
    store: Store,
) -> None:
    """Tasks whose notices come over many batches, in any order, some twice: the task rows
    and visits stored (written, updated or left alone batch after batch) are exactly those
    the fold of each task's every notice gives."""
    rng = random.Random(11)
    every = [
        *Node("r1").stage(("a", "b")),
        *Node("r1", "n2", 40).stage(("b",), outcome="fail"),
        *Node("r2", start=5).stage(("a", "b", "c")),
        *Node("r3", start=9).stage(("a",)),
        *Node("r3", "n3", 60).stage(("a",)),  # the same stage again: a second visit
    ]
    copies = [*every, *rng.sample(every, 12)]
    rng.shuffle(copies)
    while copies:
        size = rng.randint(1, 6)
        await store.add(incoming(copies[:size]))
        copies = copies[size:]
    for task_id in ("r1", "r2", "r3"):
        view = journey(task_id, every)
        assert await _stored_row(store, task_id) == store._task_row(view)
        async with store.engine.connect() as conn:
            query = select(visits).where(visits.c.task_id == task_id).order_by(visits.c.seq)
            stored = [dict(row._mapping) for row in await conn.execute(query)]
        assert stored == list(_visit_rows(view))


async def test_a_task_purged_between_a_batch_s_read_and_write_keeps_a_row(
    postgres: Postgres,
) -> None:
    """On PostgreSQL the retention's purge may delete a finished task's row after a batch
    holding a late notice of it read that row and before it writes it: the row is written
    again (not updated into nothing), so the task and its notices stay readable."""
    store = await Store.open(postgres.create_database(), stuck_after=timedelta(minutes=5))
    try:
        done = Node("late").stage(("a",))
        await store.add(incoming(done[:-1]))  # completed, not yet acked
        write = store._changed_tasks.run

        async def purged_first(conn: AsyncConnection, rows: Iterable[Mapping[str, Any]]) -> None:
            async with store.engine.begin() as other:  # another transaction, as the purge's
                await other.execute(delete(tasks).where(tasks.c.task_id == "late"))
            await write(conn, rows)

        store._changed_tasks.run = purged_first  # type: ignore[method-assign]
        await store.add(incoming(done[-1:]))  # the late ack
        task = await queries.task_journey(store, "late", now=T0)
        assert task is not None and task["visits"][0]["settled"] == "acked"
    finally:
        await store.close()
