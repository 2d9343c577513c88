"""The tracker's composition root: store, queue, ingest, HTTP server and retention, started
together and stopped together on SIGTERM/SIGINT (unacked notices go back to the queue)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any

import structlog
import uvicorn
from fastapi import APIRouter
from sqlalchemy.exc import SQLAlchemyError

from ulos_py.adapters import rabbitmq
from ulos_py.adapters.ftp import FtpAddress, FtpStorage, RetryPolicy
from ulos_py.adapters.notice_queue import NoticeQueue
from ulos_py.errors import ConfigError, one_line
from ulos_py.tracker import cancel, pages, submit
from ulos_py.tracker.api import Tracker, create_app
from ulos_py.tracker.cancel import Cancelling
from ulos_py.tracker.cancel_batches import CancelBatches
from ulos_py.tracker.collector import settle_collector
from ulos_py.tracker.events import Changes
from ulos_py.tracker.ingest import IngestStatus, Writer, ingest
from ulos_py.tracker.settings import TrackerSettings
from ulos_py.tracker.store import Store
from ulos_py.tracker.submit import Submission
from ulos_py.tracker.writer import WriterProcess

log = structlog.get_logger(__name__)

PURGE_EVERY = 3600.0
"""Seconds between two retention sweeps."""


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the tracker stops everything together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(settings: TrackerSettings) -> socket.socket:
    try:
        infos = socket.getaddrinfo(settings.host, settings.port, type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        # With its protocol (TCP) named: asyncio turns Nagle off only on such sockets, and
        # with Nagle on, each answer on a kept-alive connection waited ~40 ms for the
        # client's delayed ACK between its header and body writes.
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        raise ConfigError(
            f"ULOS_TRACKER_HOST/ULOS_TRACKER_PORT: cannot listen on "
            f"{settings.host}:{settings.port} ({exc.strerror or exc})"
        ) from exc
    return sock


async def _purge(store: Store, settings: TrackerSettings) -> None:
    """Apply the retention now and every PURGE_EVERY seconds, and refresh the planner's
    statistics; a database that fails this time is tried again next time (the ingest
    reports the outage)."""
    while True:
        try:
            forgotten = await store.purge(settings.retention)
            await store.analyze()
        except (SQLAlchemyError, OSError) as exc:
            log.warning("tracker_retention_failed", reason=one_line(exc))
        else:
            if forgotten:
                log.info("tracker_retention", forgotten=forgotten, days=settings.retention_days)
        await asyncio.sleep(PURGE_EVERY)


def _reraise(ended: set[asyncio.Task[Any]]) -> None:
    """A part that ended by itself failed: its error stops the tracker."""
    for task in ended:
        if not task.cancelled() and (error := task.exception()) is not None:
            raise error


async def run_tracker(settings: TrackerSettings, stop: asyncio.Event, *routers: APIRouter) -> None:
    """Run until `stop` is set."""
    sock = _listen(settings)
    store = await Store.open(settings.database, settings.stuck_after)
    address = rabbitmq.BrokerAddress.of(
        settings, f"ulos-py tracker {socket.gethostname()}:{os.getpid()}"
    )
    connection = await rabbitmq.connect(address)
    status, changes = IngestStatus(), Changes(settings.stuck_after)
    tracker = Tracker(store, status, changes)
    app = create_app(tracker, submit.router, cancel.router, pages.router, *routers)
    server = _Server(uvicorn.Config(app, log_level="warning"))
    storage = FtpStorage(FtpAddress.of(settings), connections=2, retry=RetryPolicy())
    writer: Writer = store
    if settings.writes_apart:
        writer = WriterProcess(
            settings.database, settings.stuck_after, settings.log_format, settings.log_level
        )
    try:
        queue = await NoticeQueue.open(connection, settings.queue, settings.batch_size * 2)
        publisher = await rabbitmq.RabbitPublisher.open(connection)
        token = settings.token.get_secret_value() if settings.token else None
        tracker.extras["submission"] = Submission(
            publisher, storage, token, output_max_bytes=settings.output_max_bytes
        )
        tracker.extras["cancelling"] = Cancelling(
            CancelBatches(publisher, settings.cancel_exchange), token
        )
        settle_collector()
        serving = asyncio.create_task(server.serve(sockets=[sock]))
        background = [
            asyncio.create_task(
                ingest(
                    queue, writer, status, changes.publish, settings.batch_size, settings.batch_wait
                )
            ),
            asyncio.create_task(_purge(store, settings)),
        ]
        host, port = sock.getsockname()[:2]
        log.info("tracker_started", url=f"http://{host}:{port}", queue=settings.queue)
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait(
            [stopping, serving, *background], return_when=asyncio.FIRST_COMPLETED
        )
        for task in [stopping, *background]:
            task.cancel()
        server.should_exit = True  # uvicorn finishes the requests it has
        await asyncio.wait([serving, *background], timeout=10)
        await queue.close()  # what was taken and not stored goes back to the queue
        _reraise(done - {stopping})
    finally:
        if isinstance(writer, WriterProcess):
            await writer.close()
        await storage.close()
        await connection.close()
        await store.close()
        sock.close()
        log.info("tracker_stopped")
