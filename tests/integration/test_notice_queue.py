"""The tracker's queue adapter over the real broker: batches, one ack per batch, and
consuming again after the connection is lost or the queue was deleted and declared anew (its
consumer is aiormq's, which aio-pika does not restore by itself)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aio_pika
import pytest

from tests.support.harness import close_connection_named
from tests.support.services import Broker, Names
from ulos_py.adapters import rabbitmq
from ulos_py.adapters.notice_queue import NoticeQueue, Taken
from ulos_py.errors import ConfigError
from ulos_py.settings import ConnectionSettings


async def depth(channel: aio_pika.abc.AbstractChannel, name: str) -> tuple[int, int]:
    """(ready, consumers) of a queue, asked of the broker."""
    underlay = await channel.get_underlay_channel()
    declared = await underlay.queue_declare(name, passive=True)
    return int(declared.message_count or 0), int(declared.consumer_count or 0)


async def connect(broker: Broker, name: str) -> aio_pika.abc.AbstractRobustConnection:
    settings = ConnectionSettings(
        MESSAGE_BROKER_HOST=broker.host,
        MESSAGE_BROKER_PORT=broker.port,
        MESSAGE_BROKER_USERNAME=broker.username,
        MESSAGE_BROKER_PASSWORD=broker.password,
    )
    return await rabbitmq.connect(rabbitmq.BrokerAddress.of(settings, name))


async def next_batch(batches: AsyncIterator[list[Taken]], timeout: float = 20) -> list[Taken]:
    async with asyncio.timeout(timeout):
        return await anext(batches)


@pytest.fixture
async def channel(
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> AsyncIterator[aio_pika.abc.AbstractChannel]:
    opened = await amqp.channel()
    yield opened
    await opened.close()


@asynccontextmanager
async def consuming(
    broker: Broker, channel: aio_pika.abc.AbstractChannel, name: str, prefetch: int
) -> AsyncIterator[tuple[NoticeQueue, str]]:
    """The adapter on a connection of its own (and that connection's name); once closed,
    the queue must hold nothing: everything taken was acked. The queue is deleted then."""
    connection_name = f"notice-queue-{uuid.uuid4().hex[:8]}"
    connection = await connect(broker, connection_name)
    source = await NoticeQueue.open(connection, name, prefetch)
    try:
        yield source, connection_name
        async with asyncio.timeout(10):  # all acked, the one consumer still there
            while await depth(channel, name) != (0, 1):
                await asyncio.sleep(0.05)
    finally:
        await source.close()
        await connection.close()
    assert await depth(channel, name) == (0, 0)
    await channel.queue_delete(name)


async def publish(channel: aio_pika.abc.AbstractChannel, name: str, *bodies: bytes) -> None:
    for body in bodies:
        await channel.default_exchange.publish(aio_pika.Message(body), name)


async def test_batches_are_whole_and_one_ack_settles_each(
    names: Names, broker: Broker, channel: aio_pika.abc.AbstractChannel
) -> None:
    name = names.queue("tracker")
    await channel.declare_queue(name, auto_delete=False)
    await publish(channel, name, *(f"n{i}".encode() for i in range(25)))
    async with consuming(broker, channel, name, prefetch=40) as (source, _):
        batches = source.batches(10, 2.0)
        taken = [await next_batch(batches) for _ in range(3)]
        assert [len(batch) for batch in taken] == [10, 10, 5]
        assert [t.body for batch in taken for t in batch] == [f"n{i}".encode() for i in range(25)]
        assert {(t.exchange, t.routing_key) for batch in taken for t in batch} == {("", name)}
        for batch in taken:
            await source.ack(batch)


async def test_the_queue_is_consumed_again_after_the_connection_is_lost(
    names: Names, broker: Broker, channel: aio_pika.abc.AbstractChannel
) -> None:
    name = names.queue("tracker")
    await channel.declare_queue(name, auto_delete=False)
    before = [f"before-{i}".encode() for i in range(10)]
    after = [f"after-{i}".encode() for i in range(5)]
    await publish(channel, name, *before)
    async with consuming(broker, channel, name, prefetch=20) as (source, connection_name):
        batches = source.batches(100, 0.5)
        stale = await next_batch(batches)
        assert [t.body for t in stale] == before
        assert await asyncio.to_thread(close_connection_named, connection_name) == 1
        # Not acked before the loss: the broker has them again, for the next consumer.
        await source.ack(stale)  # on a channel that is gone: nothing sent, nothing raised
        await publish(channel, name, *after)
        seen: set[bytes] = set()
        while seen != {*before, *after}:
            batch = await next_batch(batches)
            seen.update(t.body for t in batch)
            await source.ack(batch)


async def test_a_queue_deleted_and_declared_again_is_consumed_again(
    names: Names, broker: Broker, channel: aio_pika.abc.AbstractChannel
) -> None:
    """The broker cancels the consumer of a deleted queue; aio-pika re-consumed its own
    consumers once the queue was back, and so must this one (without closing its channel
    on each look meanwhile)."""
    name = names.queue("tracker")
    await channel.declare_queue(name, auto_delete=False)
    await publish(channel, name, b"before")
    async with consuming(broker, channel, name, prefetch=10) as (source, _):
        batches = source.batches(10, 0.2)
        first = await next_batch(batches)
        assert [t.body for t in first] == [b"before"]
        await source.ack(first)
        await channel.queue_delete(name)
        await asyncio.sleep(1)
        await channel.declare_queue(name, auto_delete=False)
        await publish(channel, name, b"after")
        again = await next_batch(batches)
        assert [t.body for t in again] == [b"after"]
        await source.ack(again)


async def test_a_queue_that_is_not_declared_is_a_config_error(names: Names, broker: Broker) -> None:
    connection = await connect(broker, "notice-queue-missing")
    try:
        with pytest.raises(ConfigError, match="ULOS_TRACKER_QUEUE"):
            await NoticeQueue.open(connection, names.queue("missing"), prefetch=10)
    finally:
        await connection.close()
