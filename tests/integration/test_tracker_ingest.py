"""Ingest over the real broker and both databases, written by the tracker's loop and by a
writing process: every notice acked only once stored, redelivered copies stored once,
bodies that are not notices kept, nothing acked while the database (or the writing process)
refuses writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import aio_pika
import asyncpg
import pytest

from tests.support.journeys import Node
from tests.support.postgres import Postgres
from tests.support.services import Broker, Names
from ulos_py.adapters import rabbitmq
from ulos_py.adapters.notice_queue import NoticeQueue
from ulos_py.settings import ConnectionSettings
from ulos_py.tracker import queries
from ulos_py.tracker.ingest import IngestStatus, Writer, ingest
from ulos_py.tracker.store import Store
from ulos_py.tracker.writer import WriterProcess


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url, stuck_after=timedelta(minutes=5))
    try:
        yield opened
    finally:
        await opened.close()


@contextlib.asynccontextmanager
async def writing(kind: str, store: Store, url: str) -> AsyncIterator[Writer]:
    """The store itself (the tracker's loop writes), or a writing process on its database."""
    if kind == "loop":
        yield store
        return
    process = WriterProcess(url, timedelta(minutes=5), "console", "warning")
    try:
        yield process
    finally:
        await process.close()


@pytest.fixture(params=["loop", "process"])
async def writer(
    request: pytest.FixtureRequest, store: Store, database_url: str
) -> AsyncIterator[Writer]:
    async with writing(request.param, store, database_url) as chosen:
        yield chosen


async def depth(channel: aio_pika.abc.AbstractChannel, name: str) -> tuple[int, int]:
    """(ready, consumers) of a queue, asked of the broker."""
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(name, passive=True)
    return int(declared.message_count or 0), int(declared.consumer_count or 0)


async def test_the_broker_queue_is_drained_into_the_store_exactly_once(
    names: Names,
    broker: Broker,
    amqp: aio_pika.abc.AbstractRobustConnection,
    store: Store,
    writer: Writer,
) -> None:
    channel = await amqp.channel()
    name = names.queue("tracker")
    await channel.declare_queue(name, auto_delete=False)
    notices = [*Node("t1").stage(("a", "b")), *Node("t2", start=50).stage(("a",))]
    bodies = [json.dumps(n.body).encode() for n in notices]
    for body in [*bodies, *bodies[:5], b"not json"]:  # copies, as after a redelivery
        await channel.default_exchange.publish(aio_pika.Message(body), name)
    settings = ConnectionSettings(
        MESSAGE_BROKER_HOST=broker.host,
        MESSAGE_BROKER_PORT=broker.port,
        MESSAGE_BROKER_USERNAME=broker.username,
        MESSAGE_BROKER_PASSWORD=broker.password,
    )
    connection = await rabbitmq.connect(rabbitmq.BrokerAddress.of(settings, "ingest test"))
    source = await NoticeQueue.open(connection, name, prefetch=8)
    status = IngestStatus()
    changed: list[str] = []
    runner = asyncio.create_task(
        ingest(source, writer, status, lambda js: changed.extend(j.task_id for j in js), size=4)
    )
    try:
        async with asyncio.timeout(30):
            while status.stored < len(bodies) + 6:
                await asyncio.sleep(0.05)
        assert await queries.counts(store) == {"notices": 14, "unreadable": 1, "tasks": 2}
        assert (await depth(channel, name))[0] == 0
        assert set(changed) == {"t1", "t2"}
        journey = await queries.task_journey(store, "t1")
        assert journey is not None
        assert journey["state"] == "delivered"
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        await source.close()
        await connection.close()
    # Closed: anything taken but not acked would be back in the queue now.
    assert await depth(channel, name) == (0, 0)
    await channel.queue_delete(name)
    await channel.close()


@dataclass(frozen=True)
class Taken:
    body: bytes
    exchange: str = "logs"
    routing_key: str = "logs"


@dataclass
class Batches:
    """A source of given batches, then nothing (an idle queue); it records the acks."""

    given: list[list[Taken]]
    acked: list[bytes] = field(default_factory=list)

    async def batches(self, size: int, wait: float) -> AsyncIterator[Sequence[Taken]]:
        for batch in self.given:
            yield batch
        await asyncio.Event().wait()

    async def ack(self, batch: Sequence[Taken]) -> None:
        self.acked += [taken.body for taken in batch]


@pytest.mark.parametrize("kind", ["loop", "process"])
@dataclass
class Fed:
    """A source of the batches put in it, as they come; it records the acks."""

    waiting: asyncio.Queue[list[Taken]] = field(default_factory=asyncio.Queue)
    acked: list[bytes] = field(default_factory=list)

    async def put(self, batch: list[Taken]) -> None:
        await self.waiting.put(batch)

    async def batches(self, size: int, wait: float) -> AsyncIterator[Sequence[Taken]]:
        while True:
            yield await self.waiting.get()

    async def ack(self, batch: Sequence[Taken]) -> None:
        self.acked += [taken.body for taken in batch]


@pytest.mark.parametrize("kind", ["loop", "process"])
async def test_nothing_is_acked_while_the_database_refuses_and_all_is_after(
    postgres: Postgres, kind: str
) -> None:
    """A real refusal: the PostgreSQL database turned read-only, then writable again."""
    url = postgres.create_database()
    store = await Store.open(url)
    database = url.rsplit("/", 1)[1]
    batch = [Taken(json.dumps(n.body).encode()) for n in Node("t1").stage(("a",))]
    source = Batches([batch])
    acked = source.acked
    status = IngestStatus()
    await _read_only(postgres, database, True)
    await store.engine.dispose()  # connections from now on are read-only
    async with writing(kind, store, url) as writer:
        runner = asyncio.create_task(ingest(source, writer, status, lambda _: None))
        try:
            async with asyncio.timeout(10):
                while status.writable:
                    await asyncio.sleep(0.05)
            await asyncio.sleep(1)
            assert acked == []
            assert status.problem is not None
            assert "read-only" in status.problem
            await _read_only(postgres, database, False)
            async with asyncio.timeout(20):
                while len(acked) < len(batch):
                    await asyncio.sleep(0.05)
            assert status.writable
            assert (await queries.counts(store))["notices"] == len(batch)
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    await store.close()


async def test_a_writing_process_that_dies_is_started_again_and_loses_nothing(
    store: Store, database_url: str
) -> None:
    """The writing process SIGKILLed between two batches: the second is refused once (not
    acked), then stored by a new writing process."""
    first = [Taken(json.dumps(n.body).encode()) for n in Node("t1").stage(("a",))]
    second = [Taken(json.dumps(n.body).encode()) for n in Node("t2").stage(("a", "b"))]
    source = Fed()
    status = IngestStatus()
    async with writing("process", store, database_url) as writer:
        assert isinstance(writer, WriterProcess)
        runner = asyncio.create_task(ingest(source, writer, status, lambda _: None))
        try:
            await source.put(first)
            async with asyncio.timeout(20):
                while len(source.acked) < len(first):
                    await asyncio.sleep(0.05)
            killed = await writer.pid()
            os.kill(killed, signal.SIGKILL)
            await source.put(second)
            async with asyncio.timeout(10):
                while status.writable:
                    await asyncio.sleep(0.01)
            assert len(source.acked) == len(first)
            assert (
                status.problem == "cannot store notices: the writing process ended; started again"
            )
            async with asyncio.timeout(30):
                while len(source.acked) < len(first) + len(second):
                    await asyncio.sleep(0.05)
            assert status.writable
            assert await writer.pid() != killed
        finally:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
    counts = await queries.counts(store)
    assert counts == {"notices": len(first) + len(second), "unreadable": 0, "tasks": 2}


async def _read_only(postgres: Postgres, database: str, on: bool) -> None:
    connection = await asyncpg.connect(postgres.url("postgres"))
    try:
        await connection.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE")
        value = "on" if on else "off"
        await connection.execute(
            f'ALTER DATABASE "{database}" SET default_transaction_read_only = {value}'
        )
    finally:
        await connection.close()
