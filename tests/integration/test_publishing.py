"""Publishes that leave together (a task's notices and forward): each still confirmed or
refused on its own, in the order they were made, on the node's own broker connection."""

from __future__ import annotations

import asyncio
import json

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.support.services import Broker, Names
from ulos_py.adapters import rabbitmq
from ulos_py.errors import PublishError
from ulos_py.ports import Envelope

pytestmark = pytest.mark.timeout(30)


async def test_publishes_made_together_are_each_confirmed_or_refused_in_order(
    broker: Broker, amqp: AbstractRobustConnection, names: Names
) -> None:
    setup = await amqp.channel()
    exchange = await setup.declare_exchange(names.exchange, aio_pika.ExchangeType.DIRECT)
    queue = await setup.declare_queue(names.queue("together"))
    await queue.bind(exchange, "bound")
    address = rabbitmq.BrokerAddress(
        broker.host, broker.port, broker.username, broker.password, "ulos-py publishing test"
    )
    connection = await rabbitmq.connect(address)  # the node's connection, writes gathered
    try:
        publisher = await rabbitmq.RabbitPublisher.open(connection)
        # the first publish to an exchange checks that it exists; then they queue in order
        await publisher.publish(Envelope(names.exchange, "bound", {"n": -1}))
        envelopes = [
            Envelope(names.exchange, "nowhere" if n == 7 else "bound", {"n": n}) for n in range(20)
        ]
        results = await asyncio.gather(
            *(publisher.publish(envelope) for envelope in envelopes), return_exceptions=True
        )
        # after a refused one, the channel goes on
        await publisher.publish(Envelope(names.exchange, "bound", {"n": 20}))
    finally:
        await connection.close()

    refused = [n for n, result in enumerate(results) if isinstance(result, PublishError)]
    assert refused == [7], results
    assert "unroutable" in str(results[7])
    assert all(result is None for n, result in enumerate(results) if n != 7)
    arrived = []
    for _ in range(21):
        message = await queue.get(timeout=5)
        arrived.append(json.loads(message.body)["n"])
        await message.ack()
    assert arrived == [n for n in range(-1, 21) if n != 7]
    await queue.delete()
    await exchange.delete()
    await setup.close()
