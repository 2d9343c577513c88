"""Task changes for live viewers (the SSE stream): each subscriber gets its own bounded
buffer, and one that does not keep up loses its oldest changes, never the tracker's pace.
A viewer that reconnects reads the current state from the API; nothing here is the record.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ulos_py.journey import Journey

BUFFER = 1000
"""Changes held per subscriber."""


class Changes:
    """Fan-out of task changes to every subscriber."""

    def __init__(self, stuck_after: timedelta) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._stuck_after = stuck_after

    def publish(self, journeys: list[Journey]) -> None:
        if not self._subscribers:  # nobody watches: every stored batch passes here
            return
        now = datetime.now(UTC)
        for view in journeys:
            stage = view.stage
            change = {
                "taskId": view.task_id,
                "taskOwnerId": view.owner,
                "state": view.state_at(now, self._stuck_after).value,
                "stage": stage.as_dict() if stage else None,
                "updatedAt": view.updated_at.isoformat() if view.updated_at else None,
            }
            for queue in self._subscribers:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait(change)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(BUFFER)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)
