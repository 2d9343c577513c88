"""The store's writing in a process of its own, so consuming and storing use two cores.

One tracker process did both: every notice cost its loop the client's reading (~42 µs) and
`Store.add` (~35 µs of fold, rows and statements), one after the other. Here the tracker's
loop consumes, serves the API and acks, while a child process folds and writes; the queue's
prefetch holds the next batch while one is stored, so the two overlap. Reads stay in the
tracker (its own connections; SQLite's WAL and PostgreSQL let both work at once).

The child is one worker of a `ProcessPoolExecutor` (spawned, not forked from a running
loop), holding a `Store` and an event loop of its own. It answers each batch with the
journeys it derived, or with why the database refused it, so the ingest retries as before.
A child that dies is started again and the batch tried anew (nothing was acked); a child
whose tracker dies gets SIGTERM from the kernel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from multiprocessing import get_context

import uvloop
from sqlalchemy.exc import SQLAlchemyError

from ulos_py.errors import StoreUnavailable, one_line
from ulos_py.journey import Journey
from ulos_py.log import configure_logging
from ulos_py.orphans import term_when_orphaned
from ulos_py.tracker.collector import settle_collector
from ulos_py.tracker.store import Incoming, Message, Store

_Raw = tuple[bytes, str, str]
"""A message as the child gets it: body, exchange, routing key."""


class WriterProcess:
    """`Store.add` and `Store.reset` run in a child process, one batch at a time."""

    def __init__(self, url: str, stuck_after: timedelta, log_format: str, log_level: str) -> None:
        self._args = (url, stuck_after.total_seconds(), log_format, log_level, os.getpid())
        self._pool = self._start()

    def _start(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=1, mp_context=get_context("spawn"), initializer=_open, initargs=self._args
        )

    async def add(self, batch: Sequence[Message]) -> list[Journey]:
        """Store a batch in the child; StoreUnavailable when the database (or the child)
        failed it, so nothing is acked and the ingest tries again."""
        raw = [(m.body, m.exchange, m.routing_key) for m in batch]
        try:
            journeys, problem = await asyncio.get_running_loop().run_in_executor(
                self._pool, _add, raw
            )
        except BrokenProcessPool as exc:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._start()
            raise StoreUnavailable("the writing process ended; started again") from exc
        if problem is not None:
            raise StoreUnavailable(problem)
        return journeys

    async def pid(self) -> int:
        """The writing process's id (it is started at the first call)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, os.getpid)

    async def reset(self) -> None:
        """The child drops its pooled connections itself after a failed batch."""

    async def close(self) -> None:
        pool = self._pool
        with contextlib.suppress(BrokenProcessPool):
            await asyncio.get_running_loop().run_in_executor(pool, _close)
        await asyncio.to_thread(pool.shutdown, True)


# What follows runs in the child.

_loop: asyncio.AbstractEventLoop | None = None
_store: Store | None = None


def _open(url: str, stuck_after: float, log_format: str, log_level: str, parent: int) -> None:
    global _loop, _store
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the tracker stops it on Ctrl-C
    term_when_orphaned()
    if os.getppid() != parent:  # the tracker died before the kernel was asked to tell
        os._exit(1)
    configure_logging(log_format, log_level)  # type: ignore[arg-type]
    _loop = uvloop.new_event_loop()
    _store = _loop.run_until_complete(
        Store.open(url, timedelta(seconds=stuck_after), migrate=False)
    )
    settle_collector()


def _add(raw: list[_Raw]) -> tuple[list[Journey], str | None]:
    assert _loop is not None, "made by the initializer"
    assert _store is not None, "opened by the initializer"
    try:
        return _loop.run_until_complete(_store.add([Incoming(*m) for m in raw])), None
    except (SQLAlchemyError, OSError) as exc:
        _loop.run_until_complete(_store.reset())  # a connection may keep what failed
        return [], one_line(exc)


def _close() -> None:
    if _loop is not None and _store is not None:
        _loop.run_until_complete(_store.close())
