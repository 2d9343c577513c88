"""The tracker's clock-dependent reads (`stuck`) and its migrations, on a real SQLite file and
a real PostgreSQL: every list, count and journey agrees with the pure model at each moment."""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from tests.integration.conftest import STUCK_AFTER as AFTER
from tests.support.journeys import T0, Node, tree
from ulos_py.journey import Notice, State, journey
from ulos_py.tracker import page_queries, queries, search
from ulos_py.tracker.queries import TaskFilter
from ulos_py.tracker.schema import metadata
from ulos_py.tracker.store import Incoming, Store, async_url

US = timedelta(microseconds=1)


def incoming(notices: list[Notice]) -> list[Incoming]:
    return [Incoming(json.dumps(n.body).encode(), "logs-exchange", "logs") for n in notices]


async def listed(store: Store, state: State, now: datetime, limit: int = 50) -> list[str]:
    """Every task id of the state's list at `now`, page after page."""
    seen: list[str] = []
    cursor = None
    while True:
        page = await queries.task_list(store, TaskFilter(state=state), limit, cursor, now)
        seen += [item["taskId"] for item in page.items]
        if page.next is None:
            return seen
        cursor = page.next


async def where_is(store: Store, task_id: str, now: datetime) -> set[str]:
    """The open states' lists that show the task at `now` (exactly one, if it is open)."""
    states = (State.WAITING, State.RUNNING, State.STUCK)
    return {state.value for state in states if task_id in await listed(store, state, now)}


async def test_a_waiting_task_turns_stuck_at_its_moment_without_a_notice(store: Store) -> None:
    notices = Node("w").stage(("a", "b", "c"))  # forwarded to b, never received there
    await store.add(incoming(notices))
    view = journey("w", notices)
    moment = view.updated_at + AFTER  # type: ignore[operator]
    before, at = moment - US, moment
    assert view.state_at(before, AFTER) == State.WAITING  # the pure model says when
    assert view.state_at(at, AFTER) == State.STUCK
    assert await where_is(store, "w", before) == {"waiting"}
    assert await where_is(store, "w", at) == {"stuck"}
    for now, state in ((before, "waiting"), (at, "stuck")):
        task = await queries.task_journey(store, "w", now=now)
        assert task is not None and task["state"] == state
        counts = await page_queries.state_counts(store, now)
        assert (counts["waiting"], counts["stuck"]) == ((1, 0) if state == "waiting" else (0, 1))
    assert await queries.stuck_tasks(store, now=before) == []
    [stuck] = await queries.stuck_tasks(store, now=at)
    assert stuck["stuckSince"] == "2025-03-01T12:05:00.007Z"


async def test_a_running_task_turns_stuck_past_its_timeout_and_margin(store: Store) -> None:
    node = Node("r")
    notices = [node.say("received", "a", tree("a")), node.say("downloaded", "a", tree("a"))]
    await store.add(incoming(notices))
    view = journey("r", notices)
    moment = T0 + timedelta(milliseconds=1, seconds=10) + AFTER  # started + timeout + margin
    assert view.state_at(moment - US, AFTER) == State.RUNNING
    assert view.state_at(moment, AFTER) == State.STUCK
    assert await where_is(store, "r", moment - US) == {"running"}
    assert await where_is(store, "r", moment) == {"stuck"}
    counts = await page_queries.state_counts(store, moment)
    assert (counts["running"], counts["stuck"]) == (0, 1)


async def test_a_waiting_task_without_a_time_never_turns_stuck(store: Store) -> None:
    notices = Node("untimed").stage(("a", "b", "c"))
    for notice in notices:
        del notice.body["timestamp"]
    await store.add(incoming(notices))
    assert journey("untimed", notices).state_at(T0 + timedelta(days=9000), AFTER) == State.WAITING
    far = datetime.now(T0.tzinfo) + timedelta(days=30)
    assert await where_is(store, "untimed", far) == {"waiting"}
    assert (await page_queries.state_counts(store, far))["waiting"] == 1


async def test_the_waiting_and_stuck_pages_split_at_the_bound(store: Store) -> None:
    """Twelve waiting tasks a minute apart and two running: at a moment between them each
    page lists exactly its side, newest first, across pages."""
    notices: list[Notice] = []
    for i in range(12):
        notices += Node(f"w{i:02}", start=i * 60_000).stage(("a", "b", "c"))
    for i in range(2):
        notices.append(Node(f"r{i}", start=i * 60_000).say("received", "a", tree("a")))
    await store.add(incoming(notices))
    now = T0 + timedelta(minutes=11, seconds=30)  # w00…w06 waited 5 min or more
    views = {task: journey(task, notices) for task in {n.task_id or "" for n in notices}}
    by_model = {
        state: sorted(
            (t for t, v in views.items() if v.state_at(now, AFTER) == state),
            key=lambda t: (views[t].updated_at, t),
            reverse=True,
        )
        for state in (State.WAITING, State.RUNNING, State.STUCK)
    }
    assert by_model[State.WAITING] == [f"w{i:02}" for i in reversed(range(7, 12))]
    for state, expected in by_model.items():
        assert await listed(store, state, now, limit=2) == expected, state
    counts = await page_queries.state_counts(store, now)
    assert {s.value: counts[s.value] for s in by_model} == {s: len(e) for s, e in by_model.items()}
    stuck = [t["taskId"] for t in await queries.stuck_tasks(store, now=now)]
    assert stuck == sorted(by_model[State.STUCK], key=lambda t: views[t].stuck_at(AFTER))  # type: ignore[arg-type, return-value]
    capped = await queries.stuck_tasks(store, now=now, limit=2)
    assert [t["taskId"] for t in capped] == stuck[:2]  # the longest stuck, when capped


async def test_an_existing_database_is_migrated_with_its_data(database_url: str) -> None:
    """A database at the first list indexes (0002), with tasks in it, opened by this
    tracker: migrated to the newest schema, every task kept, read the same, and searched
    through the text index built from them."""
    engine = create_async_engine(async_url(database_url))

    def to_0002(connection: Connection) -> None:
        config = Config()
        config.set_main_option("script_location", "ulos_py.tracker:migrations")
        config.attributes["connection"] = connection
        command.upgrade(config, "0002")

    async with engine.begin() as conn:
        await conn.run_sync(to_0002)
    old = Store(engine, AFTER)
    notices = [*Node("done").stage(("a",)), *Node("wait", start=100).stage(("a", "b", "c"))]
    await old.add(incoming(notices))
    await engine.dispose()

    store = await Store.open(database_url, stuck_after=AFTER)
    try:
        assert await queries.counts(store) == {"notices": 14, "unreadable": 0, "tasks": 2}
        assert await listed(store, State.WAITING, T0) == ["wait"]
        assert await listed(store, State.STUCK, T0 + timedelta(hours=1)) == ["wait"]
        assert await listed(store, State.PASSED, T0) == ["done"]
        task = await queries.task_journey(store, "wait", now=T0)
        assert task is not None and len(task["visits"]) == 1
        async with store.engine.connect() as conn:  # the text index holds the old tasks
            assert await search.narrowed(conn, "WAIT") is not None
        found = await queries.task_list(store, TaskFilter(text="WAIT"), now=T0)
        assert [item["taskId"] for item in found.items] == ["wait"]
    finally:
        await store.close()


async def test_the_migrations_build_the_schema_the_code_describes(store: Store) -> None:
    """Every table, column and index of schema.py, and nothing else, once migrated (but the
    text index, which lives outside it: see migration 0004)."""

    def outside(_object: object, name: str | None, *_: object) -> bool:
        return not (name or "").startswith("tasks_text") and not (name or "").endswith("_text")

    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"include_object": outside})
        return list(compare_metadata(context, metadata))

    async with store.engine.connect() as conn:
        assert await conn.run_sync(differences) == []


async def test_a_changed_stuck_after_applies_to_waiting_tasks_already_stored(
    database_url: str,
) -> None:
    """SPEC §10: waiting longer than ULOS_TRACKER_STUCK_AFTER, the tracker's setting as it
    answers, also for the tasks stored while it said something else."""
    first = await Store.open(database_url, stuck_after=timedelta(hours=1))
    await first.add(incoming(Node("w").stage(("a", "b", "c"))))
    await first.close()
    now = T0 + timedelta(minutes=2)
    for after, state in ((timedelta(hours=1), "waiting"), (timedelta(minutes=1), "stuck")):
        store = await Store.open(database_url, stuck_after=after)
        try:
            assert await where_is(store, "w", now) == {state}
            task = await queries.task_journey(store, "w", now=now)
            assert task is not None and task["state"] == state
        finally:
            await store.close()
