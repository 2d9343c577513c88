"""Indexes for `stuck` decided at read time (see stuck.py): each state's page is an index
range on its side of the time bound.

A waiting task is stuck once `updated_at <= now - stuck_after`: the (state, updated_at)
index gets `stuck_at` at its end, so the open states' pages and counts test it without
reading a row. Running tasks are found by (state, stuck_at), and the waiting tasks without
a time (never stuck) by a partial index of their own. The single-column `stuck_at` index and
the partial index of open tasks in page order served the old test (`stuck_at <= now`, which
walked every open task) and go.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"

UNTIMED = "state = 'waiting' AND stuck_at IS NULL"  # as schema.UNTIMED when written
OPEN = "stuck_at IS NOT NULL"


def upgrade() -> None:
    op.drop_index("tasks_open_newest", "tasks")
    op.drop_index("ix_tasks_stuck_at", "tasks")
    op.drop_index("tasks_state_newest", "tasks")
    op.create_index("tasks_state_newest", "tasks", ["state", "updated_at", "task_id", "stuck_at"])
    op.create_index("tasks_state_stuck", "tasks", ["state", "stuck_at"])
    op.create_index(
        "tasks_waiting_untimed",
        "tasks",
        ["updated_at", "task_id"],
        sqlite_where=sa.text(UNTIMED),
        postgresql_where=sa.text(UNTIMED),
    )


def downgrade() -> None:
    op.drop_index("tasks_waiting_untimed", "tasks")
    op.drop_index("tasks_state_stuck", "tasks")
    op.drop_index("tasks_state_newest", "tasks")
    op.create_index("tasks_state_newest", "tasks", ["state", "updated_at", "task_id"])
    op.create_index("ix_tasks_stuck_at", "tasks", ["stuck_at"])
    op.create_index(
        "tasks_open_newest",
        "tasks",
        ["updated_at", "task_id"],
        sqlite_where=sa.text(OPEN),
        postgresql_where=sa.text(OPEN),
    )
