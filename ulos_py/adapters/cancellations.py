"""Cancellations over RabbitMQ (SPEC §8): publishing them, and following them on a node.

One fanout exchange (ULOS_CANCEL_EXCHANGE) carries every cancel; the deployment binds a
stream queue (ULOS_CANCEL_STREAM, `x-max-age` = ULOS_CANCEL_RETENTION) to it, so a publish
reaches the stream and every running node in one confirmed step. A node reads:

- the stream from its first retained message (`x-stream-offset: first`), so one started
  after a cancel knows it; a stream consumer needs a prefetch count and manual acks;
- a private queue (exclusive, auto-deleted) bound to the exchange, for the running nodes.

Both feed one `CancelBoard`; a cancel seen twice is remembered once. After a lost
connection aio-pika declares and consumes both again, and the stream is read again from its
start (cancels published meanwhile are not missed).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress

import aiormq
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from ulos_py.adapters.rabbitmq import BROKER_LOST, exchange_exists, short_lived_channel
from ulos_py.cancellation import CancelBoard, Cancellation, parse_cancellation
from ulos_py.errors import ConfigError
from ulos_py.ports import Envelope, Publisher

log = structlog.get_logger(__name__)

STREAM_PREFETCH = 1000
"""Stream messages in flight to a node: a stream consumer must have a limit."""
CATCH_UP_QUIET = 0.3
"""Seconds without a stream message after which a starting node has read the backlog."""
CATCH_UP_MAX = 60.0
"""A backlog still arriving after this long is read on while the node takes tasks."""


async def publish_cancellation(
    publisher: Publisher, exchange: str, cancellation: Cancellation
) -> None:
    """Send one cancellation to every node, confirmed and mandatory (the stream bound to the
    exchange makes it routable); PublishError when the broker did not take it.

    For `ulos-py cancel` and the tracker's `POST /api/tasks/{taskId}/cancel` alike."""
    await publisher.publish(
        Envelope(
            exchange,
            "",
            cancellation.body(),
            message_id=uuid.uuid4().hex,
            correlation_id=cancellation.task_id,
        )
    )


async def follow_cancellations(
    connection: AbstractRobustConnection, exchange: str, stream: str, board: CancelBoard
) -> Callable[[], Awaitable[None]]:
    """Feed `board` from the stream and the exchange; returns once the stream's backlog has
    been read (so the node's first task is checked against it), with the function that stops.

    ConfigError names the setting when the exchange or the stream is not on the broker."""
    await _check_declared(connection, exchange, stream)
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=STREAM_PREFETCH)
    arrived = asyncio.Event()

    async def from_stream(message: AbstractIncomingMessage) -> None:
        _take(message.body, board)
        arrived.set()
        with suppress(*BROKER_LOST):  # a new channel reads the stream from its start again
            await message.ack()

    async def from_exchange(message: AbstractIncomingMessage) -> None:
        _take(message.body, board)

    stream_queue = await channel.get_queue(stream, ensure=False)
    stream_tag = await stream_queue.consume(from_stream, arguments={"x-stream-offset": "first"})
    private = await channel.declare_queue(exclusive=True, auto_delete=True)
    await private.bind(exchange, "")
    private_tag = await private.consume(from_exchange, no_ack=True)
    await _catch_up(arrived, board)

    async def stop() -> None:
        with suppress(*BROKER_LOST, aiormq.exceptions.AMQPError):
            await stream_queue.cancel(stream_tag)
            await private.cancel(private_tag)
            await channel.close()

    return stop


def _take(body: bytes, board: CancelBoard) -> None:
    cancellation = parse_cancellation(body)
    if cancellation is None:
        log.warning("cancellation_unreadable", body=body[:200].decode("utf-8", "replace"))
        return
    board.cancel(cancellation)


async def _catch_up(arrived: asyncio.Event, board: CancelBoard) -> None:
    """Wait until the stream has been quiet for CATCH_UP_QUIET seconds: its backlog is read."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CATCH_UP_MAX
    while loop.time() < deadline:
        arrived.clear()
        try:
            await asyncio.wait_for(arrived.wait(), CATCH_UP_QUIET)
        except TimeoutError:
            break
    log.info("cancellations_known", count=len(board.memory))


async def _check_declared(connection: AbstractRobustConnection, exchange: str, stream: str) -> None:
    if not await exchange_exists(connection, exchange):
        raise ConfigError(
            f"ULOS_CANCEL_EXCHANGE: exchange {exchange!r} does not exist on the broker "
            "(declare it first, e.g. with `ulos-py topology apply`)"
        )
    async with short_lived_channel(connection) as probe:
        try:
            await probe.get_queue(stream, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigError(
                f"ULOS_CANCEL_STREAM: stream {stream!r} does not exist on the broker "
                "(declare it first, e.g. with `ulos-py topology apply`)"
            ) from exc
