"""A node's cancels read in bursts (`amqp_bursts`), on a connection of their own, against
the real broker: live cancels come in a few reads a second, none is lost while the socket is
paused (past the stream's credit too), heartbeats go on, a reconnect reads the stream again,
and a node's running task still stops well within SPEC §8's 2 s."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aio_pika
import aiormq
import pytest

from tests.integration.test_cancel import STOP_WITHIN, cancel, slow_registry, tree
from tests.support.harness import (
    close_connection_named,
    make_zip,
    node_settings,
    pipeline,
    running_node,
    task,
)
from tests.support.relay import DroppingRelay
from tests.support.services import Broker, FtpServer, Names
from ulos_py.adapters import rabbitmq
from ulos_py.adapters.amqp_bursts import BurstReading
from ulos_py.adapters.cancellations import STREAM_PREFETCH, follow_cancellations
from ulos_py.cancellation import CancelBoard, Cancellation

pytestmark = pytest.mark.timeout(90)


class TimedBoard(CancelBoard):
    """A board that notes when each cancel reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[str, float] = {}
        self.arrived = asyncio.Event()

    def cancel(self, cancellation: Cancellation) -> None:
        self.seen.setdefault(cancellation.task_id, time.monotonic())
        self.arrived.set()
        super().cancel(cancellation)

    async def wait_for(self, task_ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not set(task_ids) <= self.seen.keys():
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{len(set(task_ids) - self.seen.keys())} cancels never arrived"
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), remaining)


class Stream:
    def __init__(self, exchange: aio_pika.abc.AbstractExchange, name: str) -> None:
        self.exchange = exchange
        self.name = name

    async def cancel(self, *task_ids: str) -> float:
        """One confirmed message a cancel; returns when the last was confirmed."""
        await asyncio.gather(
            *(
                self.exchange.publish(
                    aio_pika.Message(
                        json.dumps(Cancellation.now(task_id, "tester", "").body()).encode()
                    ),
                    "",
                )
                for task_id in task_ids
            )
        )
        return time.monotonic()


@pytest.fixture
async def stream(
    names: Names, amqp: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[Stream]:
    exchange_name, stream_name = names.queue("cancel-x"), names.queue("cancel-s")
    channel = await amqp.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(exchange_name, "fanout", auto_delete=True)
    queue = await channel.declare_queue(
        stream_name, durable=True, arguments={"x-queue-type": "stream"}
    )
    await queue.bind(exchange, "")
    try:
        yield Stream(exchange, stream_name)
    finally:
        await channel.queue_delete(stream_name)
        await channel.close()


def address(broker: Broker, port: int | None = None) -> rabbitmq.BrokerAddress:
    return rabbitmq.BrokerAddress(
        broker.host, port or broker.port, broker.username, broker.password, "ulos-py burst test"
    )


Follow = Callable[..., Awaitable[TimedBoard]]


@pytest.fixture
async def follow(broker: Broker, stream: Stream) -> AsyncIterator[Follow]:
    """Follows the stream with a board of its own, on a connection read by `reading`."""
    opened: list[tuple[Callable[[], Awaitable[None]], aio_pika.abc.AbstractConnection]] = []

    async def start(reading: BurstReading, port: int | None = None) -> TimedBoard:
        connection = await rabbitmq.connect(address(broker, port), reading)
        board = TimedBoard()
        stop = await follow_cancellations(
            connection, stream.exchange.name, stream.name, board, reading
        )
        opened.append((stop, connection))
        return board

    yield start
    for stop, connection in opened:
        await stop()
        await connection.close()


def bursts_of(times: list[float], gap: float = 0.01) -> int:
    """How many groups the arrival times fall in, a group ending at a gap of `gap` s."""
    ordered = sorted(times)
    return 1 + sum(1 for a, b in itertools.pairwise(ordered) if b - a > gap)


async def test_live_cancels_arrive_in_a_few_bursts_each_within_the_interval(
    follow: Follow, stream: Stream, names: Names
) -> None:
    """60 cancels published one every 20 ms or so reach the board in groups, one per 0.2 s
    opening of the socket, not 60 separate reads, none later than the interval."""
    reading = BurstReading()
    board = await follow(reading)
    ids = [f"{names.prefix}-live-{n}" for n in range(60)]
    sent: dict[str, float] = {}
    for task_id in ids:
        sent[task_id] = await stream.cancel(task_id)
        await asyncio.sleep(0.02)
    await board.wait_for(ids, timeout=5)

    groups = bursts_of([board.seen[task_id] for task_id in ids])
    late = max(board.seen[task_id] - sent[task_id] for task_id in ids)
    spread = sent[ids[-1]] - sent[ids[0]]  # longer than 1.2 s on a loaded machine
    assert groups <= spread / reading.interval + 3, f"{groups} reads over {spread:.2f} s"
    assert groups <= len(ids) // 3
    assert reading.bursting  # switched once the (empty) backlog was read
    assert late < reading.interval + 0.3, (
        f"a cancel reached the board {late:.3f} s after it was sent"
    )


async def test_the_socket_is_paused_between_bursts(follow: Follow) -> None:
    reading = BurstReading()
    await follow(reading)
    samples = []
    for _ in range(100):
        samples.append(reading.reading())
        await asyncio.sleep(0.02)
    assert samples.count(False) >= 80, f"read {samples.count(True)} times out of 100"


async def test_a_long_pause_loses_nothing_past_the_stream_credit(
    follow: Follow, stream: Stream, names: Names
) -> None:
    """Paused for 1.5 s at a time while three times the consumer's credit is published: the
    broker waits (credit, then the socket's buffers), and every cancel arrives."""
    reading = BurstReading(interval=1.5)
    board = await follow(reading)
    ids = [f"{names.prefix}-flood-{n}" for n in range(3 * STREAM_PREFETCH)]
    for start in range(0, len(ids), 500):
        await stream.cancel(*ids[start : start + 500])
    await board.wait_for(ids, timeout=30)
    assert len(board.memory) == len(ids)


async def test_heartbeats_go_on_while_the_socket_is_paused(broker: Broker) -> None:
    """A 1 s heartbeat (the broker gives up after two missed) on a connection read in bursts
    of 0.25 s stays open for 4 s of silence: a paused read delays heartbeats, never starves."""
    reading = BurstReading(interval=0.25)
    url = f"{broker.url}?heartbeat=1"
    connection = await aiormq.connect(url, transport_factory=reading)
    try:
        reading.bursts()
        await asyncio.sleep(4)
        assert not connection.is_closed
        channel = await connection.channel()  # an RPC still answers
        await channel.close()
    finally:
        await connection.close()


async def test_after_a_lost_connection_the_stream_is_read_again_then_in_bursts(
    broker: Broker, follow: Follow, stream: Stream, names: Names
) -> None:
    relay = DroppingRelay(broker)
    reading = BurstReading()
    try:
        board = await follow(reading, port=await relay.start())
        relay.held = True
        relay.drop()
        missed = f"{names.prefix}-missed"
        await stream.cancel(missed)
        relay.held = False
        await board.wait_for([missed], timeout=20)  # read again from the last offset seen
        await asyncio.sleep(0.5)
        assert reading.bursting  # the new connection was switched to bursts once caught up
        live = f"{names.prefix}-after"
        sent = await stream.cancel(live)
        await board.wait_for([live], timeout=5)
        assert board.seen[live] - sent < reading.interval + 0.3
    finally:
        await relay.close()


async def test_a_node_reads_cancels_on_a_connection_of_their_own(
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """The broker closes the node's cancel connection: it comes back, reads the stream again,
    and a later cancel still stops a running task within 2 s."""
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    doomed = f"{names.prefix}-doomed"
    ftp_server.put(f"/{names.prefix}/doomed.zip", make_zip({"main.py": "print(1)\n"}))
    settings = node_settings(
        names, broker, ftp_server, work_dir, ULOS_EXECUTORS_FILE=slow_registry(tmp_path)
    )
    name = f"ulos-py node {settings.node_id} cancellations"
    async with pipeline(names, amqp) as line, running_node(settings):
        await asyncio.sleep(1)
        assert await asyncio.to_thread(close_connection_named, name) == 1
        await asyncio.sleep(3)  # the robust connection retries every 2 s
        await line.publish(task(doomed, f"/{names.prefix}/doomed.zip", tree(names, "slow")))
        await line.logs_until(doomed, "execution_started")
        sent = await cancel(amqp, doomed, "after the cancel connection came back")
        crash = await line.next_json("crashes", timeout=STOP_WITHIN + 1)
        stopped_after = time.monotonic() - sent
    assert (crash["taskId"], crash["error"]["kind"]) == (doomed, "cancelled")
    assert stopped_after < STOP_WITHIN
