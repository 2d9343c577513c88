"""The tracker's cancels, coalesced: requests that arrive within WINDOW seconds of each other
with the same who and why go to the broker as one message of up to BATCH_LIMIT task ids.

A node's cost of a cancel is its delivery, not its task ids (see
`ulos_py.adapters.cancellations`): a script cancelling a class's 100 000 submissions one
`POST /api/tasks/{taskId}/cancel` at a time then costs every node a few hundred messages,
not 100 000. Each request still answers only once the broker confirmed the message that
carries its task (PublishError otherwise, to every request of that message); a batch's
cancellations share one `cancelledAt`, the moment its first request came in.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from ulos_py.adapters.cancellations import publish_cancellations
from ulos_py.cancellation import BATCH_LIMIT, Cancellation
from ulos_py.ports import Publisher

WINDOW = 0.05
"""Seconds a batch stays open: what a single cancel waits longer for its answer."""


@dataclass
class _Batch:
    first: Cancellation
    task_ids: dict[str, None] = field(default_factory=dict)
    """In order, each once."""
    sent: asyncio.Task[None] | None = None


class CancelBatches:
    """Coalesces cancels for one exchange (one per tracker)."""

    def __init__(self, publisher: Publisher, exchange: str, window: float = WINDOW) -> None:
        self._publisher = publisher
        self._exchange = exchange
        self._window = window
        self._open: dict[tuple[str, str], _Batch] = {}

    async def cancel(self, task_id: str, by: str, reason: str) -> Cancellation:
        """The cancellation as sent, once the broker confirmed it; PublishError if not."""
        made = Cancellation.now(task_id, by, reason)
        key = (made.by, made.reason)
        batch = self._open.get(key)
        if batch is None:
            batch = self._open[key] = _Batch(made)
            batch.sent = asyncio.create_task(self._send(key, batch))
            batch.sent.add_done_callback(_retrieved)
        batch.task_ids[task_id] = None
        if len(batch.task_ids) >= BATCH_LIMIT:
            del self._open[key]  # full: the next request opens another
        assert batch.sent is not None
        await asyncio.shield(batch.sent)  # a request that goes away leaves the others' send
        first = batch.first
        return Cancellation(task_id, first.by, first.reason, first.at)

    async def _send(self, key: tuple[str, str], batch: _Batch) -> None:
        await asyncio.sleep(self._window)
        if self._open.get(key) is batch:
            del self._open[key]
        first = batch.first
        await publish_cancellations(
            self._publisher,
            self._exchange,
            [Cancellation(task_id, first.by, first.reason, first.at) for task_id in batch.task_ids],
        )


def _retrieved(task: asyncio.Task[None]) -> None:
    """The send's error is every waiting request's; none may be left waiting (all gone)."""
    if not task.cancelled():
        task.exception()
