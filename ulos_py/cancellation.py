"""Cancellations: what one says, a node's bounded memory of them, and the scope that stops a
running task when one arrives.

    ulos-py cancel ──▶ broker (fanout exchange + stream) ──▶ each node: CancelBoard.cancel
                                                              ├─ remembers it (bounded, expiring)
                                                              └─ fires the scopes of that task

The lifecycle runs a task's stage inside `CancelBoard.scope(task_id)`: entering it raises
TaskCancelled for a task already cancelled (before anything is downloaded), and a cancel
that arrives while the stage runs cancels the asyncio task and comes out of the scope as
TaskCancelled, the way `asyncio.timeout` turns its own cancellation into TimeoutError. A
cancellation of the asyncio task by anyone else (node shutdown) stays a CancelledError, so
the delivery still goes back to its queue then.

Pure but for asyncio; `ulos_py.adapters.cancellations` feeds it from the broker.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from ulos_py.errors import TaskCancelled

TEXT_LIMIT = 500
"""Characters kept of who cancelled and why: enough to say it, bounded in memory."""
BATCH_LIMIT = 1000
"""Task ids one message may cancel together (`ulos-py cancel` with many ids): a flood of
cancels then costs a node one message per thousand, not one per task."""
DEFAULT_MAX_ENTRIES = 100_000
DEFAULT_RETENTION = 86_400.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Cancellation:
    """One operator's request to stop a task: who asked, why, and when (RFC 3339, UTC)."""

    task_id: str
    by: str
    reason: str
    at: str

    @classmethod
    def now(cls, task_id: str, by: str, reason: str = "") -> Cancellation:
        return cls(task_id, by[:TEXT_LIMIT], reason[:TEXT_LIMIT], rfc3339(utc_now()))

    def body(self) -> dict[str, str]:
        """The message that travels through the broker."""
        return {
            "taskId": self.task_id,
            "cancelledBy": self.by,
            "reason": self.reason,
            "cancelledAt": self.at,
        }

    def crash(self) -> TaskCancelled:
        why = f": {self.reason}" if self.reason else " (no reason given)"
        return TaskCancelled(f"cancelled by {self.by}{why}", self.by, self.reason, self.at)


def batch_body(cancellations: Sequence[Cancellation]) -> dict[str, Any]:
    """One message for several cancellations made together (same who, why and when)."""
    first = cancellations[0]
    if len(cancellations) > BATCH_LIMIT or any(
        (c.by, c.reason, c.at) != (first.by, first.reason, first.at) for c in cancellations
    ):
        raise ValueError(f"a batch is at most {BATCH_LIMIT} cancellations made together")
    return {
        "taskIds": [c.task_id for c in cancellations],
        "cancelledBy": first.by,
        "reason": first.reason,
        "cancelledAt": first.at,
    }


def parse_cancellations(body: bytes) -> list[Cancellation]:
    """The cancellations a broker message carries (`taskId`, or `taskIds` for a batch); none
    for anything else (a node skips it: the stream is shared, and one bad message must not
    stop every node's cancellations)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    ids = data.get("taskIds", [data.get("taskId")])
    by, reason, at = data.get("cancelledBy"), data.get("reason", ""), data.get("cancelledAt")
    if not isinstance(ids, list) or not 0 < len(ids) <= BATCH_LIMIT:
        return []
    if not all(isinstance(task_id, str) and task_id for task_id in ids):
        return []
    if not (isinstance(by, str) and isinstance(reason, str) and isinstance(at, str)):
        return []
    if _moment(at) is None:
        return []
    by, reason = by[:TEXT_LIMIT], reason[:TEXT_LIMIT]
    return [Cancellation(task_id, by, reason, at) for task_id in ids]


def parse_cancellation(body: bytes) -> Cancellation | None:
    """The one cancellation a message carries, or None (a batch, or not a cancellation)."""
    found = parse_cancellations(body)
    return found[0] if len(found) == 1 else None


@functools.lru_cache(maxsize=256)
def _moment(text: str) -> datetime | None:
    """The moment a cancellation was made; cached, since a flood's cancels share a few
    (every message is checked here, and its cancellation again when it is remembered)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class CancellationMemory:
    """The cancellations a node knows, at most `max_entries`, each for `retention` seconds
    after it was made (the stream's own retention: a node started later knows no more).

    Past the limit the cancellation that arrived first is forgotten: a flood of cancels costs
    a bounded amount of memory and a dictionary look-up per task, whatever its size.
    """

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        retention: float = DEFAULT_RETENTION,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self.retention = retention
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, Cancellation]] = OrderedDict()
        """task id → (expiry as a POSIX time, the cancellation), oldest arrival first."""

    def __len__(self) -> int:
        return len(self._entries)

    def remember(self, cancellation: Cancellation) -> bool:
        """Keep it; False when it expired already (an old message still in the stream).
        A second cancel of the same task keeps the first (who cancelled it first)."""
        made = _moment(cancellation.at)
        if made is None:
            return False
        now = self._clock().timestamp()
        expires = made.timestamp() + self.retention
        if expires <= now:
            return False
        if cancellation.task_id not in self._entries:
            self._entries[cancellation.task_id] = (expires, cancellation)
            self._forget_oldest(now)
        return True

    def lookup(self, task_id: str) -> Cancellation | None:
        """The task's cancellation, if it is remembered and has not expired."""
        entry = self._entries.get(task_id)
        if entry is None:
            return None
        expires, cancellation = entry
        if expires <= self._clock().timestamp():
            del self._entries[task_id]
            return None
        return cancellation

    def _forget_oldest(self, now: float) -> None:
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)
        while self._entries:  # expired ones at the head; others go when looked up
            expires, _ = next(iter(self._entries.values()))
            if expires > now:
                break
            self._entries.popitem(last=False)


def _set_event() -> asyncio.Event:
    event = asyncio.Event()
    event.set()
    return event


@dataclass
class CancelBoard:
    """A node's cancellations: the memory, and the scopes of the tasks running now.

    While the node may have missed cancels (its broker connection was lost, and what was
    published meanwhile is being read), a task waits before its stage starts, up to
    `behind_wait` seconds: its consumer is back before the cancels are."""

    memory: CancellationMemory = field(default_factory=CancellationMemory)
    behind_wait: float = 120.0
    _running: dict[str, set[CancelScope]] = field(default_factory=dict)
    _current: asyncio.Event = field(default_factory=_set_event)

    def behind(self) -> None:
        """Cancels may have been missed: tasks wait for `caught_up`."""
        self._current.clear()

    def caught_up(self) -> None:
        self._current.set()

    async def current(self) -> None:
        """Return once the board has heard what was missed (or after `behind_wait`)."""
        if not self._current.is_set():
            with suppress(TimeoutError):
                await asyncio.wait_for(self._current.wait(), self.behind_wait)

    def cancel(self, cancellation: Cancellation) -> None:
        """Remember it and stop the task's running stages, if any."""
        if not self.memory.remember(cancellation):
            return
        for scope in list(self._running.get(cancellation.task_id, ())):
            scope.fire(cancellation)

    def scope(self, task_id: str) -> CancelScope:
        return CancelScope(self, task_id)

    @property
    def running(self) -> int:
        return sum(len(scopes) for scopes in self._running.values())

    def _enter(self, scope: CancelScope) -> None:
        self._running.setdefault(scope.task_id, set()).add(scope)

    def _leave(self, scope: CancelScope) -> None:
        scopes = self._running.get(scope.task_id)
        if scopes is not None:
            scopes.discard(scope)
            if not scopes:
                del self._running[scope.task_id]


class CancelScope:
    """Where a cancel may stop a task: raises TaskCancelled on entry for a task already
    cancelled, and out of the block when a cancel arrives while it runs (see module doc)."""

    def __init__(self, board: CancelBoard, task_id: str) -> None:
        self._board = board
        self.task_id = task_id
        self._task: asyncio.Task[Any] | None = None
        self._cancelling = 0
        self._open = False
        self.fired: Cancellation | None = None

    async def __aenter__(self) -> CancelScope:
        await self._board.current()
        known = self._board.memory.lookup(self.task_id)
        if known is not None:
            raise known.crash()
        self._task = asyncio.current_task()
        assert self._task is not None, "a cancel scope runs inside an asyncio task"
        self._cancelling = self._task.cancelling()
        self._open = True
        self._board._enter(self)
        return self

    def fire(self, cancellation: Cancellation) -> None:
        """Stop the block (once), unless it has already passed `close`."""
        if self._open and self.fired is None and self._task is not None:
            self.fired = cancellation
            self._task.cancel(f"task {self.task_id} cancelled")

    def close(self) -> None:
        """From here on a cancel no longer stops this stage; the task's next stage drops it.
        The lifecycle closes the scope once the execution has ended, so a cancel never cuts
        an upload or a forward in half."""
        if self._open:
            self._open = False
            self._board._leave(self)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
        if self.fired is None or self._task is None:
            return
        if self._task.uncancel() > self._cancelling:
            return  # someone else (node shutdown) cancelled it too: that one decides
        if exc_type is None or issubclass(exc_type, asyncio.CancelledError):
            raise self.fired.crash() from exc
