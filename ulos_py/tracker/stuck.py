"""`stuck` at read time: the one state that depends on the clock, in SQL and on a row.

The pure model (`Journey.stuck_at`) says when a task becomes stuck if nothing changes: a
waiting task `stuck_after` after its last change, a running one `stuck_after` past its start
plus its own timeout; the store keeps that moment in `stuck_at` (NULL for a task that cannot
become stuck, such as a waiting one whose notices carried no time).

Compared with `now`, `stuck_at` cannot bound a walk in page order (newest change first): the
waiting page walked past every stuck task to find the few waiting ones (90 ms at 33 000
stuck). A waiting task's moment is its last change plus `stuck_after`, so its test is written
on the column the pages are ordered by: stuck when `updated_at <= now - stuck_after`. That is
a range of the (state, updated_at) index, and each page seeks to its side of the bound:
neither walks the other's rows. `stuck_after` is the tracker's setting now (SPEC §10: waiting
longer than it), so a changed setting applies to every waiting task at once. A running task's
moment depends on its own timeout: running tasks compare `stuck_at` (they are what nodes
hold now, few at a time; the index carries `stuck_at`, so the walk reads no row).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, or_

from ulos_py.journey import State
from ulos_py.tracker.schema import tasks


@dataclass(frozen=True)
class Clock:
    """The moment a read is answered for, and the tracker's `stuck_after`."""

    now: datetime
    stuck_after: timedelta

    @property
    def bound(self) -> datetime:
        """A waiting task last changed at or before this is stuck."""
        return self.now - self.stuck_after


def waiting_stuck(clock: Clock) -> ColumnElement[bool]:
    return and_(
        tasks.c.state == State.WAITING.value,
        tasks.c.updated_at <= clock.bound,
        tasks.c.stuck_at.is_not(None),
    )


def running_stuck(clock: Clock) -> ColumnElement[bool]:
    return and_(tasks.c.state == State.RUNNING.value, tasks.c.stuck_at <= clock.now)


def parts(state: State, clock: Clock) -> list[ColumnElement[bool]]:
    """The rows in `state` now, as disjoint parts, each one index range walked in page
    order (a list page is the merge of one page of each)."""
    waiting, running = State.WAITING.value, State.RUNNING.value
    if state == State.STUCK:
        return [waiting_stuck(clock), running_stuck(clock)]
    if state == State.WAITING:
        return [
            and_(
                tasks.c.state == waiting,
                tasks.c.updated_at > clock.bound,
                tasks.c.stuck_at.is_not(None),
            ),
            # without a time it never becomes stuck (a partial index of its own)
            and_(tasks.c.state == waiting, tasks.c.stuck_at.is_(None)),
        ]
    if state == State.RUNNING:
        return [
            and_(
                tasks.c.state == running,
                or_(tasks.c.stuck_at.is_(None), tasks.c.stuck_at > clock.now),
            )
        ]
    return [tasks.c.state == state.value]


def stuck_since(row: Any, stuck_after: timedelta) -> datetime | None:
    """When a task row becomes (or became) stuck if nothing changes; None if never."""
    if row.stuck_at is None:
        return None
    if row.state == State.WAITING.value:
        return row.updated_at + stuck_after  # type: ignore[no-any-return]
    return row.stuck_at  # type: ignore[no-any-return]


def state_of(row: Any, clock: Clock) -> str:
    """A task row's state now."""
    since = stuck_since(row, clock.stuck_after)
    return State.STUCK.value if since is not None and since <= clock.now else str(row.state)
