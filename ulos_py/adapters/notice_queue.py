"""The tracker's queue through aio-pika: notices taken in batches, each acked on request.

The tracker acks a message only after the transaction storing it has committed, so this
adapter only hands messages over and acks when told. Nothing is acked on a dead channel:
the broker hands those messages out again after a reconnect, and the store keeps each once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import suppress
from dataclasses import dataclass

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from ulos_py.adapters.rabbitmq import BROKER_LOST
from ulos_py.errors import ConfigError


@dataclass(frozen=True)
class Taken:
    """A message from the queue, not yet acked."""

    body: bytes
    exchange: str
    routing_key: str
    _message: AbstractIncomingMessage


class NoticeQueue:
    """The tracker's durable queue, consumed with a prefetch window of `prefetch`."""

    def __init__(self, queue: AbstractQueue) -> None:
        self._queue = queue
        self._inbox: asyncio.Queue[Taken] = asyncio.Queue()
        self._tag: str | None = None

    @classmethod
    async def open(
        cls, connection: AbstractRobustConnection, name: str, prefetch: int
    ) -> NoticeQueue:
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=prefetch)
        try:
            queue = await channel.get_queue(name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            raise ConfigError(
                f"ULOS_TRACKER_QUEUE: queue {name!r} does not exist on the broker (declare it "
                "first, e.g. with `ulos-py topology apply`)"
            ) from exc
        notice_queue = cls(queue)
        notice_queue._tag = await queue.consume(notice_queue._take)
        return notice_queue

    async def _take(self, message: AbstractIncomingMessage) -> None:
        taken = Taken(message.body, message.exchange or "", message.routing_key or "", message)
        self._inbox.put_nowait(taken)

    async def batches(self, size: int, wait: float) -> AsyncIterator[list[Taken]]:
        """Lists of up to `size` messages: what arrived within `wait` seconds of the first."""
        while True:
            batch = [await self._inbox.get()]
            deadline = asyncio.get_running_loop().time() + wait
            while len(batch) < size:
                left = deadline - asyncio.get_running_loop().time()
                if self._inbox.empty() and left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._inbox.get(), max(left, 0)))
                except TimeoutError:
                    break
            yield batch

    async def ack(self, batch: Sequence[Taken]) -> None:
        """Ack a whole batch in one frame per channel: `multiple` on its last delivery tag.

        Batches are acked in the order they were taken, so every earlier tag on the channel
        is acked already or in this batch. A message of a channel that is gone is not
        acked: the broker delivers it again, and the store keeps it once."""
        last: dict[int, AbstractIncomingMessage] = {}
        for taken in batch:
            last[id(taken._message.channel)] = taken._message
        for message in last.values():
            with suppress(*BROKER_LOST):
                await message.ack(multiple=True)

    async def close(self) -> None:
        """Stop consuming; what was taken and not acked goes back to the queue."""
        with suppress(*BROKER_LOST):
            if self._tag is not None:
                await self._queue.cancel(self._tag)
            await self._queue.channel.close()
