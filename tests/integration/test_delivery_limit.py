"""The broker's own poison guard on a quorum queue: `delivery_limit` in a topology file
becomes `x-delivery-limit`, and a task returned more often than that is dead-lettered by the
broker, whoever returned it (README: "Poison guard")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.support.services import Names
from ulos_py.adapters.rabbitmq_tooling import declare_topology
from ulos_py.errors import ConfigError
from ulos_py.topology import BindingSpec, ExchangeSpec, QueueSpec, Topology, load_topology


def limited(names: Names, limit: int) -> Topology:
    return Topology(
        exchange=(ExchangeSpec(name=names.queue("dead"), type="fanout"),),
        queue=(
            QueueSpec(
                name=names.queue("stage"),
                type="quorum",
                delivery_limit=limit,
                dead_letter_exchange=names.queue("dead"),
            ),
            QueueSpec(
                name=names.queue("dead-letters"),
                type="quorum",
                bind=(BindingSpec(exchange=names.queue("dead"), routing_key=""),),
            ),
        ),
    )


async def test_a_task_returned_past_the_limit_is_dead_lettered_by_the_broker(
    names: Names, amqp: AbstractRobustConnection
) -> None:
    await declare_topology(amqp, limited(names, 2))
    channel = await amqp.channel()
    try:
        stage = await channel.get_queue(names.queue("stage"))
        dead = await channel.get_queue(names.queue("dead-letters"))
        await channel.default_exchange.publish(aio_pika.Message(b"poison"), stage.name)

        returns = 0
        while (message := await _get(stage)) is not None:
            await message.reject(requeue=True)  # as a node that crashes with requeue, or dies
            returns += 1
            assert returns <= 5, "the broker never stopped handing it out"
        landed = await _get(dead)

        assert returns == 3  # the first delivery and 2 more, then the broker gave up
        assert landed is not None and landed.body == b"poison"
        await landed.ack()
    finally:
        for name in ("stage", "dead-letters"):
            await channel.queue_delete(names.queue(name))
        await channel.exchange_delete(names.queue("dead"))
        await channel.close()


async def _get(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage | None:
    """The next message, waiting a little for a dead-lettered one to arrive."""
    for _ in range(20):
        if (message := await queue.get(fail=False)) is not None:
            return message
        await asyncio.sleep(0.1)
    return None


def test_a_delivery_limit_needs_a_quorum_queue() -> None:
    with pytest.raises(ValueError, match="delivery_limit"):
        QueueSpec(name="q", delivery_limit=3)
    with pytest.raises(ValueError, match="max_priority"):
        QueueSpec(name="q", type="quorum", max_priority=10)
    assert QueueSpec(name="q", type="quorum", delivery_limit=3).arguments() == {
        "x-queue-type": "quorum",
        "x-delivery-limit": 3,
    }


def test_the_topology_file_says_which_queue_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "topology.toml"
    path.write_text('[[queue]]\nname = "grader"\nmax_priority = 10\ntype = "quorum"\n')
    with pytest.raises(ConfigError, match="max_priority"):
        load_topology(path)
