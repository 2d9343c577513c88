"""SQLite's text index learns a task again only when a searched column changed.

The store updates a changed task row in place (it deleted and inserted it before); the update
trigger of 0004 fired for any UPDATE naming a searched column, so every update forgot and
re-learned the row's trigrams even when only its state or times moved. The trigger now has a
WHEN: one of the searched columns differs. PostgreSQL's pg_trgm indexes need nothing.
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"

COLUMNS = ("task_id", "owner", "file_path", "stage_key")  # as 0004's, when written
FTS = "tasks_text"


def _exists(name: str) -> bool:
    probe = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?"
    return op.get_bind().exec_driver_sql(probe, (name,)).first() is not None


def _trigger(when: str) -> None:
    names = ", ".join(COLUMNS)
    new = ", ".join(f"new.{c}" for c in COLUMNS)
    old = ", ".join(f"old.{c}" for c in COLUMNS)
    forget = f"INSERT INTO {FTS}({FTS}, rowid, {names}) VALUES ('delete', old.rowid, {old});"
    learn = f"INSERT INTO {FTS}(rowid, {names}) VALUES (new.rowid, {new});"
    op.execute(f"DROP TRIGGER {FTS}_update")
    op.execute(
        f"CREATE TRIGGER {FTS}_update AFTER UPDATE OF {names} ON tasks {when}"
        f"BEGIN {forget} {learn} END"
    )


def upgrade() -> None:
    # No trigger where 0004 made no index (a SQLite without FTS5's trigram; PostgreSQL).
    if op.get_bind().dialect.name == "sqlite" and _exists(f"{FTS}_update"):
        changed = " OR ".join(f"old.{c} IS NOT new.{c}" for c in COLUMNS)
        _trigger(f"WHEN {changed} ")


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite" and _exists(f"{FTS}_update"):
        _trigger("")
