"""Ingest over the real broker and both databases: every notice acked only once stored,
redelivered copies stored once, bodies that are not notices kept, and nothing acked while
the database refuses writes."""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from ulos_py.tracker.ingest import IngestStatus, ingest
from ulos_py.tracker.store import Store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url, stuck_after=timedelta(minutes=5))
    try:
        yield opened
    finally:
        await opened.close()


async def depth(channel: aio_pika.abc.AbstractChannel, name: str) -> tuple[int, int]:
    """(ready, consumers) of a queue, asked of the broker."""
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(name, passive=True)
    return int(declared.message_count or 0), int(declared.consumer_count or 0)


async def test_the_broker_queue_is_drained_into_the_store_exactly_once(
    names: Names, broker: Broker, amqp: aio_pika.abc.AbstractRobustConnection, store: Store
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
        ingest(source, store, status, lambda js: changed.extend(j.task_id for j in js), size=4)
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


async def test_nothing_is_acked_while_the_database_refuses_and_all_is_after(
    postgres: Postgres,
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
    runner = asyncio.create_task(ingest(source, store, status, lambda _: None))
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
