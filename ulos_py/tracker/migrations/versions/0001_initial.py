"""The first schema: notices, unreadable bodies, tasks and their visits."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from ulos_py.tracker.schema import Id, UtcDateTime

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "notices",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("task_id", sa.Text, nullable=True, index=True),
        sa.Column("stored_at", UtcDateTime, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
    )
    op.create_table(
        "unreadable",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(64), nullable=False, unique=True),
        sa.Column("stored_at", UtcDateTime, nullable=False),
        sa.Column("exchange", sa.Text, nullable=False),
        sa.Column("routing_key", sa.Text, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
    )
    op.create_table(
        "tasks",
        sa.Column("task_id", sa.Text, primary_key=True),
        sa.Column("owner", sa.Text, nullable=True, index=True),
        sa.Column("file_path", sa.Text, nullable=True),
        sa.Column("state", sa.String(16), nullable=False, index=True),
        sa.Column("stage_exchange", sa.Text, nullable=True),
        sa.Column("stage_key", sa.Text, nullable=True, index=True),
        sa.Column("first_seen", UtcDateTime, nullable=True),
        sa.Column("updated_at", UtcDateTime, nullable=False),
        sa.Column("stuck_at", UtcDateTime, nullable=True, index=True),
        sa.Column("visits", sa.Text, nullable=False),
    )
    op.create_index("tasks_newest", "tasks", ["updated_at", "task_id"])
    op.create_table(
        "visits",
        sa.Column("task_id", sa.Text, primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("stage_exchange", sa.Text, nullable=True),
        sa.Column("stage_key", sa.Text, nullable=True),
        sa.Column("node_id", sa.Text, nullable=True, index=True),
        sa.Column("attempt", sa.Integer, nullable=False),
        sa.Column("started_at", UtcDateTime, nullable=True, index=True),
        sa.Column("last_at", UtcDateTime, nullable=True),
        sa.Column("outcome", sa.String(16), nullable=True),
        sa.Column("crash_kind", sa.String(32), nullable=True),
        sa.Column("seconds", sa.Float, nullable=True),
        sa.Column("durations", sa.Text, nullable=False),
    )


def downgrade() -> None:
    for table in ("visits", "tasks", "unreadable", "notices"):
        op.drop_table(table)
