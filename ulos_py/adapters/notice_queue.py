"""The tracker's queue: notices taken in batches, each batch acked on request.

The tracker acks a message only after the transaction storing it has committed, so this
adapter only hands messages over and acks when told. Nothing is acked on a dead channel:
the broker hands those messages out again after a reconnect, and the store keeps each once.

Every notice of every node is one delivery here, so they are taken at the lowest cost the
client has (as the node's cancel reader does): aiormq's consumer on the channel aio-pika
keeps open, without aio-pika's message object and second asyncio task per delivery, and
one `multiple` ack per batch. aio-pika restores the channel and its prefetch after a lost
connection but not an aiormq consumer, so the channel's reopening consumes again; and when
the broker cancels the consumer (the queue was deleted) it consumes again once the queue is
declared anew, as aio-pika's own consumer did.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import cast

import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractRobustChannel, AbstractRobustConnection
from aiormq.abc import DeliveredMessage

from ulos_py.adapters.rabbitmq import BROKER_LOST, short_lived_channel
from ulos_py.errors import ConfigError

log = structlog.get_logger(__name__)

RECONSUME_EVERY = 2.0
"""Seconds between looks for a queue that was deleted under the consumer."""


@dataclass(frozen=True, slots=True)
class Taken:
    """A message from the queue, not yet acked."""

    body: bytes
    exchange: str
    routing_key: str
    _channel: aiormq.abc.AbstractChannel
    _tag: int


class NoticeQueue:
    """The tracker's durable queue, consumed with a prefetch window of `prefetch`."""

    def __init__(
        self, connection: AbstractRobustConnection, channel: AbstractChannel, name: str
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._name = name
        self._inbox: list[Taken] = []
        self._arrived = asyncio.Event()
        self._want = 1
        """Inbox length that wakes `batches`: the first message, or a full batch."""
        self._consumer: tuple[aiormq.abc.AbstractChannel, str] | None = None
        self._resuming: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, name: str, prefetch: int
    ) -> NoticeQueue:
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        try:
            await channel.get_queue(name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigError(
                f"ULOS_TRACKER_QUEUE: queue {name!r} does not exist on the broker (declare it "
                "first, e.g. with `ulos-py topology apply`)"
            ) from exc
        notice_queue = cls(connection, channel, name)
        await notice_queue._consume()
        if isinstance(channel, AbstractRobustChannel):
            channel.reopen_callbacks.add(notice_queue._reopened)
        return notice_queue

    async def _consume(self) -> None:
        underlay = await self._channel.get_underlay_channel()
        if self._cancelled not in underlay.on_consumer_cancel_callbacks:
            underlay.on_consumer_cancel_callbacks.add(self._cancelled)
        consumed = await underlay.basic_consume(self._name, self._take)
        assert consumed.consumer_tag is not None, "the broker names every consumer"
        self._consumer = (underlay, consumed.consumer_tag)

    def _reopened(self, _channel: object) -> None:
        """The channel is open again (a lost connection, a channel error): consume anew,
        once the connection is ready (not from within aio-pika's restore)."""
        self._consumer = None
        if self._resuming is not None:  # it may be consuming on the channel that closed
            self._resuming.cancel()
        self._resuming = asyncio.create_task(self._resume())

    def _cancelled(self, frame: aiormq.spec.Basic.Cancel) -> None:
        """The broker ended the consumer (its queue was deleted): consume again once the
        queue is back."""
        if self._consumer is not None and frame.consumer_tag == self._consumer[1]:
            self._consumer = None
            log.warning("tracker_queue_gone", queue=self._name, retry_every=RECONSUME_EVERY)
            if self._resuming is None or self._resuming.done():
                self._resuming = asyncio.create_task(self._resume())

    async def _resume(self) -> None:
        """Consume again once the queue exists, looked for on a channel of its own: a
        consume of a missing queue would close this one, and its reopening would try again
        at once, without end."""
        try:
            while True:  # polled: nothing tells of a queue declared anew
                if await self._queue_exists():
                    await self._consume()
                    return
                await asyncio.sleep(RECONSUME_EVERY)
        except (*BROKER_LOST, aiormq.exceptions.AMQPError) as exc:
            log.warning("tracker_queue_not_consumed", reason=str(exc))  # the next reopen retries

    async def _queue_exists(self) -> bool:
        async with short_lived_channel(self._connection) as probe:
            try:
                await probe.get_queue(self._name, ensure=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
        return True

    async def _take(self, message: DeliveredMessage) -> None:
        delivery = cast(aiormq.spec.Basic.Deliver, message.delivery)  # what a consumer is given
        self._inbox.append(
            Taken(
                message.body,
                delivery.exchange or "",
                delivery.routing_key or "",
                message.channel,
                delivery.delivery_tag or 0,
            )
        )
        if len(self._inbox) >= self._want:
            self._arrived.set()

    async def batches(self, size: int, wait: float) -> AsyncIterator[list[Taken]]:
        """Lists of up to `size` messages: what arrived within `wait` seconds of the first."""
        loop = asyncio.get_running_loop()
        while True:
            self._want = 1
            while not self._inbox:
                self._arrived.clear()
                await self._arrived.wait()
            self._want = size
            deadline = loop.time() + wait
            while len(self._inbox) < size and loop.time() < deadline:
                self._arrived.clear()
                with suppress(TimeoutError):
                    async with asyncio.timeout_at(deadline):
                        await self._arrived.wait()
            batch = self._inbox[:size]
            del self._inbox[:size]
            yield batch

    async def ack(self, batch: Sequence[Taken]) -> None:
        """Ack a whole batch in one frame per channel: `multiple` on its last delivery tag.

        Batches are acked in the order they were taken, so every earlier tag on the channel
        is acked already or in this batch. A message of a channel that is gone is not
        acked: the broker delivers it again, and the store keeps it once."""
        last: dict[int, Taken] = {}
        for taken in batch:
            last[id(taken._channel)] = taken
        for taken in last.values():
            if taken._channel.is_closed:
                continue
            with suppress(*BROKER_LOST):
                await taken._channel.basic_ack(taken._tag, multiple=True)

    async def close(self) -> None:
        """Stop consuming; what was taken and not acked goes back to the queue."""
        if isinstance(self._channel, AbstractRobustChannel):
            self._channel.reopen_callbacks.discard(self._reopened)
        if self._resuming is not None:
            self._resuming.cancel()
        with suppress(*BROKER_LOST, aiormq.exceptions.AMQPError):
            if self._consumer is not None:
                underlay, tag = self._consumer
                self._consumer = None
                if not underlay.is_closed:
                    await underlay.basic_cancel(tag)
            await self._channel.close()
