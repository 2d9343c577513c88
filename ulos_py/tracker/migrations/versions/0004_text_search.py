"""A trigram index of the text the task list searches (id, owner, file path, stage key), for
`search.py`: SQLite FTS5 with the `trigram` tokenizer (SQLite 3.34 and later), kept in step
with the tasks table by triggers; PostgreSQL pg_trgm GIN indexes on each lowered column.

Optional on both: a SQLite without the tokenizer, or a PostgreSQL without pg_trgm (it comes
with the server's contrib modules) or without the right to create it, gets no index, says so
in the log, and the search walks the list as before (the same results, slower).
"""

from __future__ import annotations

import logging
import sqlite3

from alembic import op
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

revision = "0004"
down_revision = "0003"

COLUMNS = ("task_id", "owner", "file_path", "stage_key")
FTS = "tasks_text"
PENDING_KB = 64
"""GIN's list of not yet merged entries, which every search reads through: at its default
(4 MB) a search after an ingest took 100 ms instead of 5 until autovacuum merged it."""
log = logging.getLogger(__name__)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _sqlite(bind)
    else:
        _postgresql(bind)


def _sqlite(bind: Connection) -> None:
    fts5 = bind.exec_driver_sql("SELECT sqlite_compileoption_used('ENABLE_FTS5')").scalar()
    if sqlite3.sqlite_version_info < (3, 34) or not fts5:
        version = sqlite3.sqlite_version
        log.warning("SQLite %s has no FTS5 trigram tokenizer: text search unindexed", version)
        return
    names = ", ".join(COLUMNS)
    new = ", ".join(f"new.{c}" for c in COLUMNS)
    old = ", ".join(f"old.{c}" for c in COLUMNS)
    forget = f"INSERT INTO {FTS}({FTS}, rowid, {names}) VALUES ('delete', old.rowid, {old});"
    learn = f"INSERT INTO {FTS}(rowid, {names}) VALUES (new.rowid, {new});"
    op.execute(
        f"CREATE VIRTUAL TABLE {FTS} USING fts5({names}, content='tasks', "
        "content_rowid='rowid', tokenize='trigram')"
    )
    op.execute(f"INSERT INTO {FTS}({FTS}) VALUES ('rebuild')")
    op.execute(f"CREATE TRIGGER {FTS}_insert AFTER INSERT ON tasks BEGIN {learn} END")
    op.execute(f"CREATE TRIGGER {FTS}_delete AFTER DELETE ON tasks BEGIN {forget} END")
    op.execute(
        f"CREATE TRIGGER {FTS}_update AFTER UPDATE OF {names} ON tasks BEGIN {forget} {learn} END"
    )


def _postgresql(bind: Connection) -> None:
    try:
        with bind.begin_nested():  # a refusal rolls back to here, not the whole migration
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")
    except DBAPIError as exc:
        log.warning("no pg_trgm (%s): text search unindexed", str(exc.orig).splitlines()[0])
        return
    for column in COLUMNS:
        op.execute(
            f"CREATE INDEX tasks_{column}_text ON tasks USING gin (lower({column}) gin_trgm_ops)"
            f" WITH (gin_pending_list_limit = {PENDING_KB})"
        )


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER IF EXISTS {FTS}_{trigger}")
        op.execute(f"DROP TABLE IF EXISTS {FTS}")
    else:
        for column in COLUMNS:
            op.execute(f"DROP INDEX IF EXISTS tasks_{column}_text")
