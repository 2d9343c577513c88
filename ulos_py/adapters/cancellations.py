"""Cancellations over RabbitMQ (SPEC §8): publishing them, and following them on a node.

One fanout exchange (ULOS_CANCEL_EXCHANGE) carries every cancel; the deployment binds a
stream queue (ULOS_CANCEL_STREAM, `x-max-age` = ULOS_CANCEL_RETENTION) to it, so a publish
reaches the stream, and through it every node, in one confirmed step. A node reads the
stream and nothing else: from its first retained message when it starts (so one started
after a cancel knows it before its first task), then live, as the broker appends to it, and
from the last offset it saw after a lost connection. One source means each cancel costs a
node one delivery, never two.

A delivery is what a cancel costs a node (a flood of separate cancels is a flood of them), so
they are taken at the lowest cost the client has: aiormq's consumer, without aio-pika's
message object and second asyncio task per delivery, acknowledged ACK_EVERY at once. The
stream's credit (STREAM_PREFETCH) keeps a flood's backlog on the broker's disk, not in the
node's memory.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress

import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)
from aiormq.abc import DeliveredMessage

from ulos_py.adapters.rabbitmq import BROKER_LOST, exchange_exists, short_lived_channel
from ulos_py.cancellation import (
    BATCH_LIMIT,
    CancelBoard,
    Cancellation,
    batch_body,
    parse_cancellations,
)
from ulos_py.errors import ConfigError
from ulos_py.ports import Envelope, Publisher

log = structlog.get_logger(__name__)

STREAM_PREFETCH = 1000
"""Stream messages in flight to a node: a stream consumer must have a limit."""
CATCH_UP_QUIET = 0.3
"""Seconds without a stream message after which a starting node has read the backlog."""
TAIL_WAIT = 0.5
"""Seconds a non-empty stream takes at most to show its last chunk."""
ACK_EVERY = 200
"""Stream messages acknowledged at once (fewer than STREAM_PREFETCH, or the stream stalls)."""
CATCH_UP_MAX = 120.0
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


async def publish_cancellations(
    publisher: Publisher, exchange: str, cancellations: Sequence[Cancellation]
) -> None:
    """Send cancellations made together (same who, why and when) in messages of up to
    BATCH_LIMIT task ids, each confirmed; PublishError at the first the broker refused."""
    for start in range(0, len(cancellations), BATCH_LIMIT):
        batch = cancellations[start : start + BATCH_LIMIT]
        await publisher.publish(
            Envelope(
                exchange,
                "",
                batch_body(batch) if len(batch) > 1 else batch[0].body(),
                message_id=uuid.uuid4().hex,
                correlation_id=batch[0].task_id if len(batch) == 1 else None,
            )
        )


async def follow_cancellations(
    connection: AbstractRobustConnection, exchange: str, stream: str, board: CancelBoard
) -> Callable[[], Awaitable[None]]:
    """Feed `board` from the stream: returns once its backlog is read (so the node's first
    task is checked against it), with the stop function; the stream is followed live from
    then on until it is called. After a lost connection it is read again from the last
    offset seen, and the board holds new tasks until then: what was published meanwhile is
    not missed.

    ConfigError names the setting when the exchange or the stream is not on the broker."""
    await _check_declared(connection, exchange, stream)
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=STREAM_PREFETCH)
    reader = _StreamReader(channel, await channel.get_queue(stream, ensure=False), board)
    await reader.read()
    rereads: set[asyncio.Task[None]] = set()

    def reconnected(_connection: object) -> None:  # aiormq consumers are not restored
        task = asyncio.create_task(reader.read())
        rereads.add(task)
        task.add_done_callback(rereads.discard)

    def lost(_connection: object, _exc: BaseException | None = None) -> None:
        board.behind()  # until the stream is read again from where it stopped

    connection.close_callbacks.add(lost)
    connection.reconnect_callbacks.add(reconnected)

    async def stop() -> None:
        connection.close_callbacks.discard(lost)
        connection.reconnect_callbacks.discard(reconnected)
        for task in list(rereads):
            task.cancel()
        with suppress(*BROKER_LOST, aiormq.exceptions.AMQPError):
            await reader.stop()
            await channel.close()

    return stop


def _take(body: bytes, board: CancelBoard) -> None:
    cancellations = parse_cancellations(body)
    if not cancellations:
        log.warning("cancellation_unreadable", body=body[:200].decode("utf-8", "replace"))
    for cancellation in cancellations:
        board.cancel(cancellation)


class _StreamReader:
    """Follows the stream from where it last stopped (its start, the first time); `read`
    returns once it has passed the offset that was the stream's last when the read began.

    That last offset is what a consumer from the stream's last chunk (`x-stream-offset:
    last`) sees; when it sees nothing within TAIL_WAIT (an empty stream), the read ends
    after CATCH_UP_QUIET seconds without a message. A message count from the broker would
    not do: a stream does not report one."""

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue, board: CancelBoard) -> None:
        self._channel = channel
        self._queue = queue
        self._board = board
        self._next: int | str = "first"
        self._arrived = asyncio.Event()
        self._unacked = 0
        self._consumer: tuple[aiormq.abc.AbstractChannel, str] | None = None

    async def _take(self, message: DeliveredMessage) -> None:
        _take(message.body, self._board)
        offset = (message.header.properties.headers or {}).get("x-stream-offset")
        if isinstance(offset, int):
            self._next = offset + 1
        self._arrived.set()
        self._unacked += 1
        if self._unacked >= ACK_EVERY and message.delivery_tag is not None:
            self._unacked = 0  # acks only give a stream consumer credit: batch them
            with suppress(*BROKER_LOST):
                await message.channel.basic_ack(message.delivery_tag, multiple=True)

    async def read(self) -> None:
        try:
            tail = await self._tail()
            underlay = await self._channel.get_underlay_channel()
            self._unacked = 0  # a new channel: the old one's deliveries are gone with it
            consumed = await underlay.basic_consume(
                self._queue.name, self._take, arguments={"x-stream-offset": self._next}
            )
        except (*BROKER_LOST, aiormq.exceptions.AMQPError) as exc:
            log.warning("cancellations_not_read", reason=str(exc))  # the next reconnect retries
            self._board.caught_up()  # tasks are not held for a read that failed
            return
        assert consumed.consumer_tag is not None, "the broker names every consumer"
        self._consumer = (underlay, consumed.consumer_tag)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_MAX
        while loop.time() < deadline and not self._reached(tail):
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), CATCH_UP_QUIET)
            except TimeoutError:
                if tail is None:
                    break
        empty = tail is None and self._next == "first"  # nothing shown, nothing arrived
        if not empty and not self._reached(tail):
            log.warning("cancellations_partly_read", next_offset=self._next, last_offset=tail)
        log.info("cancellations_known", count=len(self._board.memory), next_offset=self._next)
        self._board.caught_up()

    async def stop(self) -> None:
        if self._consumer is not None:
            underlay, tag = self._consumer
            self._consumer = None
            await underlay.basic_cancel(tag)

    def _reached(self, tail: int | None) -> bool:
        return tail is not None and isinstance(self._next, int) and self._next > tail

    async def _tail(self) -> int | None:
        """The stream's last offset now, or None if it shows none within TAIL_WAIT."""
        seen: list[int] = []
        arrived = asyncio.Event()

        async def take(message: AbstractIncomingMessage) -> None:
            offset = (message.headers or {}).get("x-stream-offset")
            if isinstance(offset, int):
                seen.append(offset)
            arrived.set()
            with suppress(*BROKER_LOST):  # credit for the rest of a chunk past the prefetch
                await message.ack()

        tag = await self._queue.consume(take, arguments={"x-stream-offset": "last"})
        try:
            await asyncio.wait_for(arrived.wait(), TAIL_WAIT)
            while True:  # the rest of the last chunk comes at once
                arrived.clear()
                await asyncio.wait_for(arrived.wait(), 0.1)
        except TimeoutError:
            pass
        finally:
            with suppress(*BROKER_LOST, aiormq.exceptions.AMQPError):
                await self._queue.cancel(tag)
        return max(seen) if seen else None


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
