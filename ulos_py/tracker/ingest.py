"""Consume → batch → commit → ack: how notices get from the tracker's queue into the store.

Nothing is acked that is not stored: a batch is acked only after the transaction storing it
has committed. While the database cannot be written the batch is retried with back-off and
nothing is acked, so the broker keeps every notice (the prefetch window bounds what waits
here); a killed tracker loses nothing either, since its unacked notices go back to the queue
and a redelivered notice is stored once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol, TypeVar

import structlog
from sqlalchemy.exc import SQLAlchemyError

from ulos_py.errors import StoreUnavailable, one_line
from ulos_py.journey import Journey
from ulos_py.tracker.store import Message

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=Message)

RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 5.0)
"""Seconds between tries to store a batch while the database fails; the last repeats."""


class Writer(Protocol):
    """Where batches are stored: the `Store` itself, or a process writing to it (see
    tracker.writer)."""

    async def add(self, batch: Sequence[Message]) -> list[Journey]: ...

    async def reset(self) -> None: ...


class Source(Protocol[M]):
    """Where notices come from: batches of messages, acked a batch at a time once stored
    (see adapters.notice_queue)."""

    def batches(self, size: int, wait: float) -> AsyncIterator[Sequence[M]]: ...

    async def ack(self, batch: Sequence[M]) -> None: ...


@dataclass
class IngestStatus:
    """What /healthz tells: whether notices are being stored, and the last trouble."""

    consuming: bool = False
    writable: bool = True
    stored: int = 0
    """Messages committed and acked since start."""
    last_commit: datetime | None = None
    problem: str | None = None


async def ingest(
    source: Source[M],
    store: Writer,
    status: IngestStatus,
    on_change: Callable[[list[Journey]], None],
    size: int = 200,
    wait: float = 0.05,
) -> None:
    """Store what the source gives, batch by batch, until cancelled."""
    status.consuming = True
    try:
        async for batch in source.batches(size, wait):
            journeys = await _commit(store, batch, status)
            await source.ack(batch)
            status.stored += len(batch)
            on_change(journeys)
    finally:
        status.consuming = False


async def _commit(store: Writer, batch: Sequence[Message], status: IngestStatus) -> list[Journey]:
    """Store the batch, trying again until the database takes it."""
    attempt = 0
    while True:
        try:
            journeys = await store.add(batch)
        except (SQLAlchemyError, OSError, StoreUnavailable) as exc:
            reason = one_line(exc)
            if status.writable:
                log.error("tracker_cannot_store", reason=reason, waiting=len(batch))
            status.writable, status.problem = False, f"cannot store notices: {reason}"
            await store.reset()  # a connection may keep what failed (read-only, broken)
            await asyncio.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
            attempt += 1
            continue
        if not status.writable:
            log.info("tracker_storing_again")
        status.writable, status.problem = True, None
        status.last_commit = datetime.now(UTC)
        return journeys
