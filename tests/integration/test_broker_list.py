"""Several brokers in MESSAGE_BROKER_HOST: tried in turn, the first to answer wins, and a
connection that loses its broker moves to the next one (SPEC §8).

The real broker is listed after a port where nothing listens (and, for the move, after a
relay the test cuts), so the connection must go past the dead entry to work at all.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.support.relay import DroppingRelay
from tests.support.services import Broker
from ulos_py.adapters import rabbitmq
from ulos_py.errors import BrokerUnavailable


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: nothing listens there


def address(broker: Broker, hosts: list[tuple[str, int]]) -> rabbitmq.BrokerAddress:
    (host, port), *peers = hosts
    return rabbitmq.BrokerAddress(
        host, port, broker.username, broker.password, "ulos-py broker list test", None, tuple(peers)
    )


async def test_the_first_broker_that_answers_is_used(broker: Broker) -> None:
    dead = closed_port()
    listed = address(broker, [("127.0.0.1", dead), (broker.host, broker.port)])

    connection = await rabbitmq.connect(listed)
    try:
        assert rabbitmq.current_broker(connection) == f"{broker.host}:{broker.port}"
        channel = await connection.channel()
        await channel.close()
    finally:
        await connection.close()


async def test_no_broker_answering_names_every_one(broker: Broker) -> None:
    ports = [closed_port(), closed_port()]
    listed = address(broker, [("127.0.0.1", port) for port in ports])

    with pytest.raises(BrokerUnavailable) as raised:
        await rabbitmq.connect(listed)

    assert all(f"127.0.0.1:{port}" in str(raised.value) for port in ports)


async def test_a_lost_broker_is_left_for_the_next_one(broker: Broker) -> None:
    """A relay in front of the broker is listed first; once it is cut (and closes new
    connections at once) the connection comes back through the broker listed second."""
    relay = DroppingRelay(broker)
    relay_port = await relay.start()
    listed = address(broker, [("127.0.0.1", relay_port), (broker.host, broker.port)])
    connection = await rabbitmq.connect(listed)
    back = asyncio.Event()
    connection.reconnect_callbacks.add(lambda _c: back.set())
    try:
        assert rabbitmq.current_broker(connection) == f"127.0.0.1:{relay_port}"
        relay.held = True  # new connections through it are closed at once
        relay.drop()
        await asyncio.wait_for(back.wait(), 30)
        assert rabbitmq.current_broker(connection) == f"{broker.host}:{broker.port}"
        channel = await connection.channel()  # the connection works there
        await channel.close()
    finally:
        await connection.close()
        await relay.close()
