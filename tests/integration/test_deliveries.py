"""ulos_py.adapters.rabbitmq_deliveries on the real broker: what a counted requeue puts back
on the queue."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.support.services import Names
from ulos_py.adapters import rabbitmq_deliveries
from ulos_py.adapters.rabbitmq import RabbitPublisher
from ulos_py.ports import Delivery

pytestmark = pytest.mark.timeout(30)


async def test_a_counted_requeue_copies_the_task_without_the_brokers_headers(
    amqp: AbstractRobustConnection, names: Names
) -> None:
    channel = await amqp.channel()
    queue = await channel.declare_queue(
        names.queue("requeued"), arguments={"x-max-priority": 10}
    )  # not auto-deleted: the consumer stops before the copy is published
    # A task an operator moved back from a dead-letter queue: it carries the broker's
    # dead-lettering headers and our reject mark, and was counted twice before.
    await channel.default_exchange.publish(
        aio_pika.Message(
            b'{"taskId": "t-1"}',
            headers={
                "x-death": [{"queue": "elsewhere", "reason": "rejected", "count": 1}],
                "x-first-death-queue": "elsewhere",
                "x-first-death-reason": "rejected",
                "x-ulos-rejected": True,
                "x-ulos-deliveries": 2,
                "x-lab": "kept",
            },
            content_type="application/json",
            priority=7,
            message_id="m-1",
            correlation_id="t-1",
        ),
        routing_key=queue.name,
    )
    seen: asyncio.Queue[Delivery] = asyncio.Queue()

    async def on_delivery(delivery: Delivery) -> None:
        await seen.put(delivery)

    publisher = await RabbitPublisher.open(amqp)
    stop = await rabbitmq_deliveries.consume(amqp, queue, publisher, on_delivery, prefetch=2)
    delivery = await asyncio.wait_for(seen.get(), 10)
    await stop()  # the copy stays in the queue, to be looked at
    assert delivery.delivery_count == 2
    await delivery.put_back_counted()
    await delivery.ack()  # as the lifecycle does once the copy is confirmed

    copy = await queue.get(timeout=10)
    assert copy.headers == {"x-lab": "kept", "x-ulos-deliveries": 3}
    assert (copy.priority, copy.message_id, copy.correlation_id) == (7, "m-1", "t-1")
    assert copy.content_type == "application/json"
    assert copy.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert copy.body == b'{"taskId": "t-1"}'
    await copy.ack()
    assert await queue.get(fail=False) is None  # nothing else: no second copy
    await channel.queue_delete(queue.name)
    await channel.close()
