"""Task list pages in index order: one (filter, updated_at, task_id) index per list filter.

The list is read newest change first with keyset pagination on (updated_at, task_id). With an
index on the filter column alone, the database read every matching row and sorted them for
each page (450 ms for one state at 100 000 tasks on SQLite); with the pair behind the filter
it walks the index in page order and stops after one page. They replace the single-column
indexes, which they also serve (the overview counts states from the state index).

The stuck list walks a partial index of the tasks that may become stuck (those with a
`stuck_at`): in a lab that runs well they are the few in flight, so even "nothing is stuck"
is a short walk.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"

NEWEST = ["updated_at", "task_id"]
REPLACED = {"owner": "ix_tasks_owner", "state": "ix_tasks_state", "stage_key": "ix_tasks_stage_key"}


def upgrade() -> None:
    for column, old in REPLACED.items():
        op.drop_index(old, "tasks")
        op.create_index(f"tasks_{column}_newest", "tasks", [column, *NEWEST])
    op.create_index(
        "tasks_open_newest",
        "tasks",
        NEWEST,
        sqlite_where=sa.text("stuck_at IS NOT NULL"),
        postgresql_where=sa.text("stuck_at IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("tasks_open_newest", "tasks")
    for column, old in REPLACED.items():
        op.drop_index(f"tasks_{column}_newest", "tasks")
        op.create_index(old, "tasks", [column])
