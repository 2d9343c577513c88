"""A consumed delivery as the lifecycle settles it, and the consumer that hands them out.

Besides ack and reject, a delivery can be put back counted (`put_back_counted`, so a task
that crashes every time stops after ULOS_MAX_DELIVERIES) and leased (`lease`, for a task
that may outlast the broker's consumer timeout: the task moves into a queue of its own
whose TTL dead-letters it back if the node dies). Leases borrow places from the prefetch
window (`PrefetchWindow`), which is why the consumer lives here too.
"""

from __future__ import annotations

import asyncio
import math
import uuid
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue, AbstractRobustConnection

from ulos_py.adapters.rabbitmq import (
    BROKER_LOST,
    PUBLISH_TIMEOUT,
    RabbitPublisher,
    short_lived_channel,
)
from ulos_py.errors import ConfigError, PublishError, SettleFailed
from ulos_py.ports import Delivery

log = structlog.get_logger(__name__)

DELIVERIES_HEADER = "x-ulos-deliveries"
"""Our count of a message's deliveries, carried across counted requeues."""

LEASE_PREFIX = "ulos-lease."
"""Names of the queues that hold leased tasks (see `RabbitDelivery.lease`). A broker user
with restricted permissions needs configure, write and read on `^ulos-lease\\.`."""
LEASE_QUEUE_GRACE = 60.0
"""Seconds a lease queue outlives its task's TTL (`x-expires`): a queue that expires drops
what it holds, so the task must be dead-lettered back first."""
REJECTED_HEADER = "x-ulos-rejected"
"""Marks a leased task rejected for good. It goes back through its queue only to be rejected
there by whichever node receives it, so the queue's own dead-letter settings apply."""
BROKER_DEATH_HEADERS = (
    "x-death",
    "x-first-death-queue",
    "x-first-death-reason",
    "x-first-death-exchange",
    "x-last-death-queue",
    "x-last-death-reason",
    "x-last-death-exchange",
)
"""Headers the broker writes when it dead-letters a message; a copy we publish leaves them
out (they are the broker's, and a message that has them came through a dead-letter queue)."""


@dataclass(frozen=True)
class _Consumer:
    """What every delivery of one consumer shares."""

    connection: AbstractRobustConnection
    """For the short-lived channels that declare and delete lease queues."""
    queue: str
    publisher: RabbitPublisher
    """Puts counted requeues and leased tasks back on the queue."""
    window: PrefetchWindow
    """The consumer's prefetch window, which a lease narrows while it lasts."""


class RabbitDelivery:
    """A consumed message as the lifecycle sees it."""

    def __init__(self, message: AbstractIncomingMessage, consumer: _Consumer) -> None:
        self._message = message
        self._connection = consumer.connection
        self._queue = consumer.queue
        self._publisher = consumer.publisher
        self._window = consumer.window
        self._lease_queue: str | None = None
        """The lease queue holding the task once `lease` took it off the delivery."""

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def priority(self) -> int | None:
        return self._message.priority

    async def ack(self) -> None:
        if self._lease_queue is not None:
            await self._release_lease()
            return
        try:
            await self._message.ack()
        except BROKER_LOST as exc:
            raise SettleFailed(f"cannot ack, broker connection lost: {exc}") from exc

    async def reject(self, requeue: bool) -> None:
        if self._lease_queue is not None:
            await self._return_leased(requeue)
            return
        try:
            await self._message.reject(requeue=requeue)
        except BROKER_LOST as exc:
            raise SettleFailed(f"cannot reject, broker connection lost: {exc}") from exc

    @property
    def delivery_count(self) -> int:
        headers = self._message.headers or {}
        counted = headers.get(DELIVERIES_HEADER)
        if isinstance(counted, int) and counted > 0:
            return counted + (1 if self._message.redelivered else 0)
        quorum = headers.get("x-delivery-count")  # a quorum queue counts returns itself
        if isinstance(quorum, int):
            return quorum + 1
        return 2 if self._message.redelivered else 1

    async def put_back_counted(self) -> None:
        try:
            await self._publisher.publish_raw(
                self._copy(self.delivery_count + 1), exchange="", routing_key=self._queue
            )
        except PublishError as exc:
            raise SettleFailed(f"cannot requeue: {exc}") from exc

    async def lease(self, seconds: float) -> bool:
        """Lease the task: a confirmed copy goes into a queue of its own whose TTL is `seconds`
        and whose dead-letter target is this delivery's queue, then the delivery is acked.

        While the node lives it settles the lease (`ack` deletes it; `reject` puts a copy
        back on the queue first); if the node dies, the broker
        dead-letters the task back to its queue when the TTL runs out. A lease uses only
        what every RabbitMQ since 3.0 has (message TTL, dead-lettering, queue expiry).
        """
        if self._lease_queue is not None:
            return True
        stage = self._queue.encode()[:200].decode(errors="ignore")  # names are <= 255 bytes
        name = f"{LEASE_PREFIX}{stage}.{uuid.uuid4().hex}"
        ttl = max(1, math.ceil(seconds * 1000))
        arguments: dict[str, str | int] = {
            "x-message-ttl": ttl,
            "x-expires": ttl + math.ceil(LEASE_QUEUE_GRACE * 1000),
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": self._queue,
        }
        try:
            await _declare_lease_queue(self._connection, name, arguments)
            await self._publisher.publish_raw(self._copy(self.delivery_count + 1), "", name)
        except PublishError as exc:
            log.warning("lease_refused", lease=name, reason=str(exc))
            await _delete_queue(self._connection, name)
            return False
        await self._window.narrow()  # before the ack frees the delivery's place
        try:  # the task is the lease's now; the lifecycle settles the lease, not this ack
            await self._message.ack()
        except BROKER_LOST as exc:
            await _delete_queue(self._connection, name)  # the broker delivers the task again
            await self._window.widen()
            raise SettleFailed(f"cannot lease the task, broker connection lost: {exc}") from exc
        self._lease_queue = name
        return True

    async def _release_lease(self) -> None:
        """The leased task is settled: delete its lease, which nobody may run again."""
        assert self._lease_queue is not None
        try:
            held = await _delete_queue(self._connection, self._lease_queue)
        finally:  # the task no longer holds a slot of the node, whatever the broker said
            await self._window.widen()
        if held is None:
            lost = f"cannot delete the lease {self._lease_queue}: broker connection lost"
            raise SettleFailed(lost)
        if held == 0:  # the TTL ran out first: the broker has given the task back already
            log.warning("lease_expired", lease=self._lease_queue, queue=self._queue)

    async def _return_leased(self, requeue: bool) -> None:
        """Put a leased task back on its queue: to be run again (counted as a delivery), or,
        rejected for good, to be rejected there by the node that receives it."""
        extra = {} if requeue else {REJECTED_HEADER: True}
        try:
            await self._publisher.publish_raw(
                self._copy(self.delivery_count + 1, **extra), "", self._queue
            )
        except PublishError as exc:
            raise SettleFailed(f"cannot return the leased task to its queue: {exc}") from exc
        await self._release_lease()

    def _copy(self, deliveries: int, **headers: bool) -> aio_pika.Message:
        """This delivery's message, to publish again as delivery number `deliveries`."""
        message = self._message
        kept = {
            key: value
            for key, value in (message.headers or {}).items()
            if key not in BROKER_DEATH_HEADERS and key != REJECTED_HEADER
        }
        return aio_pika.Message(
            message.body,
            headers={**kept, DELIVERIES_HEADER: deliveries, **headers},
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=message.priority,
            correlation_id=message.correlation_id,
            message_id=message.message_id,
        )


def _rejected_for_good(message: AbstractIncomingMessage) -> bool:
    """A leased task its node rejected for good (see REJECTED_HEADER), on its way to the
    queue's dead-letter exchange. One that already came through a dead-letter queue (an
    operator re-published it from there) is a task again."""
    headers = message.headers or {}
    return bool(headers.get(REJECTED_HEADER)) and "x-death" not in headers


async def _declare_lease_queue(
    connection: AbstractRobustConnection, name: str, arguments: dict[str, str | int]
) -> None:
    """Declare a durable lease queue; PublishError if the broker refuses (a user without
    configure permission, say), which closes only the short-lived channel."""
    try:
        async with short_lived_channel(connection) as channel:
            await channel.declare_queue(name, durable=True, arguments=arguments)
    except (*BROKER_LOST, aiormq.exceptions.AMQPError) as exc:
        raise PublishError(f"cannot declare queue {name!r}: {exc}") from exc


async def _delete_queue(connection: AbstractRobustConnection, name: str) -> int | None:
    """Delete a queue; how many messages it held (0 if it was gone already), or None if
    the broker could not be asked."""
    try:
        async with short_lived_channel(connection) as channel:
            deleted = await channel.queue_delete(name)
    except (*BROKER_LOST, aiormq.exceptions.AMQPError) as exc:
        log.warning("queue_delete_failed", queue=name, reason=str(exc))
        return None
    return int(deleted.message_count or 0)


async def open_queue(
    connection: AbstractRobustConnection, name: str, prefetch: int
) -> AbstractQueue:
    """The consumption queue, which must already exist (topology is declared elsewhere)."""
    channel = await connection.channel(publisher_confirms=False)
    await channel.set_qos(prefetch_count=prefetch)
    try:
        return await channel.get_queue(name, ensure=True)
    except aiormq.exceptions.ChannelNotFoundEntity as exc:
        raise ConfigError(
            f"MESSAGE_BROKER_CONSUMPTION_QUEUE: queue {name!r} does not exist on the broker "
            "(declare it first, e.g. with `ulos-py topology apply`)"
        ) from exc


async def consume(
    connection: AbstractRobustConnection,
    queue: AbstractQueue,
    publisher: RabbitPublisher,
    on_delivery: Callable[[Delivery], Awaitable[None]],
    prefetch: int = 0,
) -> Callable[[], Awaitable[None]]:
    """Start consuming; returns the function that stops taking new deliveries.

    `publisher` puts counted requeues and leases back on the queue; `prefetch` is the
    channel's prefetch count (0: none), whose window leases narrow (see PrefetchWindow)."""

    async def deliver(message: AbstractIncomingMessage) -> None:
        # Settled here, not in the lifecycle: another node's lifecycle already rejected this
        # task for good and reported it; this reject only lets the queue dead-letter it.
        if _rejected_for_good(message):
            log.info("leased_task_rejected", queue=queue.name, message_id=message.message_id)
            with suppress(*BROKER_LOST):  # if not, the broker delivers it again
                await message.reject(requeue=False)
            return
        await on_delivery(RabbitDelivery(message, consumer))

    window = PrefetchWindow(queue, prefetch, deliver)
    consumer = _Consumer(connection, queue.name, publisher, window)
    await window.open()
    return window.close


class PrefetchWindow:
    """The node's consumer and the broker's prefetch window, which leases borrow from.

    A node runs as many tasks at once as its prefetch count. A lease acks its delivery while
    the task still holds one of those slots; left alone, the broker would fill the freed place
    with a delivery that must wait, unacknowledged, for a slot, and could reach the consumer
    timeout waiting (closing the channel under the node's other unleased tasks). So each
    lease narrows the window by one (basic.qos) before its delivery is acked, and while every
    slot holds a lease the consumer is cancelled, to consume again when one ends. Without a
    prefetch count there is no window to keep: deliveries wait for a slot in any case.
    """

    def __init__(
        self,
        queue: AbstractQueue,
        prefetch: int,
        deliver: Callable[[AbstractIncomingMessage], Awaitable[None]],
    ) -> None:
        self._queue = queue
        self._prefetch = prefetch
        self._deliver = deliver
        self._leases = 0
        self._tag: str | None = None
        self._closed = False
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        self._tag = await self._queue.consume(self._deliver)

    async def close(self) -> None:
        """Stop taking deliveries, for good."""
        async with self._lock:
            self._closed = True
            await self._pause()

    async def narrow(self) -> None:
        """A lease is about to ack its delivery."""
        async with self._lock:
            self._leases += 1
            await self._fit()

    async def widen(self) -> None:
        """A lease has ended."""
        async with self._lock:
            self._leases -= 1
            await self._fit()

    async def _fit(self) -> None:
        if self._prefetch == 0:
            return
        width = self._prefetch - self._leases
        try:
            if width <= 0:
                await self._pause()
                return
            qos = self._queue.channel.set_qos(prefetch_count=width)
            await asyncio.wait_for(qos, PUBLISH_TIMEOUT)
            if self._tag is None and not self._closed:
                self._tag = await self._queue.consume(self._deliver)
                log.info("consuming_again", queue=self._queue.name, leases=self._leases)
        except (*BROKER_LOST, aiormq.exceptions.AMQPError, TimeoutError) as exc:
            log.warning("prefetch_not_changed", leases=self._leases, reason=str(exc) or repr(exc))

    async def _pause(self) -> None:
        if self._tag is None:
            return
        tag, self._tag = self._tag, None
        if not self._closed:
            log.info("consumer_paused", queue=self._queue.name, leases=self._leases)
        try:
            await self._queue.cancel(tag)
        except BROKER_LOST as exc:
            log.warning("cancel_consumer_failed", reason=str(exc))
