"""The task list's text search (`q`): the text anywhere in a task's id, owner, file path or
stage key, case-insensitively and literally (`%` and `_` are characters, not wildcards).

`contains` is what a match is, on both databases. Tested on every row in page order, a text
that few tasks hold walked the whole table (0.5 s at 100 000 tasks). So a trigram index
(migration 0004: SQLite FTS5's `trigram` tokenizer, PostgreSQL's pg_trgm) is asked first for
the tasks that may hold it: if at most `CAP`, the page is drawn from those alone; if more, the
text is common and the walk in page order finds a page soon. Either way every row is tested
with `contains`, so the index only ever narrows the rows read, never what matches. A text
shorter than a trigram, or a database without the index, is walked as before.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, func, literal_column, or_, select, table, text
from sqlalchemy.ext.asyncio import AsyncConnection

from ulos_py.tracker.schema import tasks

COLUMNS = (tasks.c.task_id, tasks.c.owner, tasks.c.file_path, tasks.c.stage_key)
CAP = 1000
"""More candidates than this: the text is common, walk the list's own order instead."""
TRIGRAM = 3

SQLITE_INDEX = "tasks_text"
"""The FTS5 table (external content: the tasks table, kept by triggers)."""
POSTGRESQL_INDEX = "tasks_task_id_text"
"""One of the four pg_trgm GIN indexes, on lower(column) each."""


def contains(needle: str) -> ColumnElement[bool]:
    """A task holds the text in one of its columns (lowered; wildcards escaped)."""
    lowered = needle.lower()
    return or_(*(func.lower(column).contains(lowered, autoescape=True) for column in COLUMNS))


async def narrowed(conn: AsyncConnection, needle: str) -> ColumnElement[bool] | None:
    """The rows the trigram index says may hold the text, when they are few; None when the
    list should walk its order instead (no index, a short text, a common one)."""
    if len(needle) < TRIGRAM or not await _indexed(conn):
        return None
    if conn.dialect.name == "sqlite":
        rowid: ColumnElement[int] = literal_column("rowid")
        phrase = '"' + needle.replace('"', '""') + '"'  # one FTS5 string: a substring
        query: Any = (
            select(rowid)
            .select_from(table(SQLITE_INDEX))
            .where(literal_column(SQLITE_INDEX).op("MATCH")(phrase))
        )
        found = [row[0] for row in await conn.execute(query.limit(CAP + 1))]
        if len(found) > CAP:
            return None
        return literal_column(f"{tasks.name}.rowid").in_(found)
    query = select(tasks.c.task_id).where(contains(needle)).limit(CAP + 1)
    ids = [row[0] for row in await conn.execute(query)]
    return tasks.c.task_id.in_(ids) if len(ids) <= CAP else None


async def _indexed(conn: AsyncConnection) -> bool:
    if conn.dialect.name == "sqlite":
        probe = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = :name"
        name = SQLITE_INDEX
    else:
        probe = "SELECT 1 FROM pg_indexes WHERE tablename = 'tasks' AND indexname = :name"
        name = POSTGRESQL_INDEX
    return (await conn.execute(text(probe), {"name": name})).first() is not None
