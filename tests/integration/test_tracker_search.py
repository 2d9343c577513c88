"""The task list's text search on a real SQLite file and a real PostgreSQL: literal and
case-insensitive, and the same answer through the trigram index as by walking every row."""

from __future__ import annotations

import json
import logging
import random
from datetime import timedelta

import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from tests.support.journeys import T0, Node
from tests.support.postgres import PG_USER, Postgres
from ulos_py.journey import Notice
from ulos_py.tracker import queries, search
from ulos_py.tracker.queries import TaskFilter
from ulos_py.tracker.store import Incoming, Store, async_url


def task(
    task_id: str, owner: str, start: int, keys: tuple[str, ...] = ("grading",)
) -> list[Notice]:
    notices = Node(task_id, start=start).stage(keys)
    for notice in notices:
        notice.body["taskOwnerId"] = owner
    return notices


async def add(store: Store, notices: list[Notice]) -> None:
    await store.add([Incoming(json.dumps(n.body).encode()) for n in notices])


async def found(store: Store, text: str) -> list[str]:
    """The list searched for `text`, newest first, as the API answers it."""
    page = await queries.task_list(store, TaskFilter(text=text), limit=500, now=T0)
    return [item["taskId"] for item in page.items]


async def walked(store: Store, text: str) -> list[str]:
    """The same list read without the index: every row tested in page order."""
    query = queries.list_query(TaskFilter(text=text), queries.clock_of(store, T0), limit=500)
    async with store.engine.connect() as conn:
        return [row.task_id for row in await conn.execute(query)]


async def through_index(store: Store, text: str) -> bool:
    async with store.engine.connect() as conn:
        return await search.narrowed(conn, text) is not None


async def test_search_is_literal_and_case_insensitive(store: Store) -> None:
    await add(store, task("Exam-50%_Final", "Alice", 0))
    await add(store, task("exam-50x-final", "bob", 10))
    await add(store, task("exam_50", "carol", 20))
    await add(store, task("notes", "DAVE", 30, ("report",)))
    assert await through_index(store, "EXAM")  # the index is there, on both databases
    expected = {
        "50%": ["Exam-50%_Final"],  # not exam-50x-final: % is a character
        "%_f": ["Exam-50%_Final"],
        "m_5": ["exam_50"],  # not exam-50…: _ is a character
        "EXAM": ["exam_50", "exam-50x-final", "Exam-50%_Final"],
        "FINAL": ["exam-50x-final", "Exam-50%_Final"],
        "dave": ["notes"],
        "REPORT": ["notes"],  # its stage
        "/ftp/notes.zip": ["notes"],  # its file path
        "ex": ["exam_50", "exam-50x-final", "Exam-50%_Final"],  # shorter than a trigram
        "zzz": [],
        '"': [],
    }
    for text, ids in expected.items():
        assert await found(store, text) == ids, text
        assert await walked(store, text) == ids, text


async def test_the_index_answers_as_the_walk_does(store: Store) -> None:
    """Random ids, owners and texts over a small alphabet (wildcards, quotes, cases, a
    non-ASCII letter): the index only narrows what is read, never what matches."""
    rng = random.Random(15)
    alphabet = "aAbB%_-\"'é"

    def word(size: int) -> str:
        return "".join(rng.choice(alphabet) for _ in range(size))

    notices = [n for i in range(60) for n in task(f"{word(6)}{i}", word(4), i * 10)]
    await add(store, notices)
    for _ in range(60):
        text = word(rng.randint(1, 4))
        assert await found(store, text) == await walked(store, text), text


async def test_the_index_follows_changes_and_purges(store: Store) -> None:
    await add(store, task("moving", "erin", 0, ("grading", "review", "report")))
    assert await found(store, "review") == ["moving"]  # waiting at review
    later = Node("moving", start=100).stage(("review", "report"))
    for notice in later:
        notice.body["taskOwnerId"] = "erin"
    await add(store, later[:2])  # running at review: its row updated, no searched text moved
    assert await found(store, "review") == ["moving"]
    for notice in later:
        notice.body.update(taskOwnerId="frank", filePath="/ftp/renamed.zip")
    await add(store, later[2:])  # went on to report, under another owner and path
    assert (await found(store, "review"), await found(store, "report")) == ([], ["moving"])
    assert await found(store, "frank") == ["moving"]
    assert await found(store, "erin") == []
    assert (await found(store, "renamed"), await found(store, "ftp/moving")) == (["moving"], [])
    await add(store, task("gone", "gina", 200))
    assert await found(store, "gone") == ["gone"]
    await store.purge(timedelta(days=1), now=T0 + timedelta(days=2))
    assert await found(store, "gone") == []
    if store.engine.dialect.name == "sqlite":  # the FTS index matches its content table
        async with store.engine.begin() as conn:
            await conn.exec_driver_sql(
                "INSERT INTO tasks_text(tasks_text, rank) VALUES ('integrity-check', 1)"
            )


async def test_without_the_right_to_create_pg_trgm_the_search_walks(
    postgres: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    """A database user that may create tables but not extensions: the tracker starts, says
    in one line that the search is unindexed, and finds the same tasks by walking."""
    url = postgres.create_database()
    role = f"plain_{url.rsplit('_', 1)[1]}"
    admin = create_async_engine(async_url(url))
    async with admin.begin() as conn:
        for statement in (
            f"CREATE ROLE {role} LOGIN",
            f"GRANT USAGE, CREATE ON SCHEMA public TO {role}",
        ):
            await conn.exec_driver_sql(statement)
    await admin.dispose()
    plain = url.replace(f"{PG_USER}@", f"{role}@")
    with caplog.at_level(logging.WARNING):
        store = await Store.open(plain, stuck_after=timedelta(minutes=5))
    try:
        [said] = [r.getMessage() for r in caplog.records if "pg_trgm" in r.getMessage()]
        assert "text search unindexed" in said and "\n" not in said
        await add(store, task("Exam-50%_Final", "Alice", 0))
        await add(store, task("exam-50x-final", "bob", 10))
        assert not await through_index(store, "EXAM")
        assert await found(store, "50%") == ["Exam-50%_Final"]
        assert await found(store, "exam") == ["exam-50x-final", "Exam-50%_Final"]
    finally:
        await store.close()
