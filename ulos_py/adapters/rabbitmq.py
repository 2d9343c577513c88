"""RabbitMQ through aio-pika: confirmed mandatory publishing and a consuming queue.

Publishing uses its own channel, separate from the consuming one, because a publish to a
missing exchange makes the broker close the channel it came on. Exchanges are checked with
a passive declare on a throwaway channel before their first use, for the same reason.

`observe` is the watcher's side: a private queue bound to the notice exchanges.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
)

from ulos_py.errors import (
    BrokerUnavailable,
    ConfigError,
    ExchangeMissing,
    PublishError,
    SettleFailed,
)
from ulos_py.ports import Delivery, Envelope
from ulos_py.settings import ConnectionSettings
from ulos_py.topology import Topology

log = structlog.get_logger(__name__)

PUBLISH_TIMEOUT = 30.0
"""Seconds to wait for a confirm before calling a publish failed (a stuck broker)."""

BROKER_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    RuntimeError,  # aiormq raises it for writes on a closing connection
)


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str
    password: str
    connection_name: str

    @classmethod
    def of(cls, settings: ConnectionSettings, connection_name: str) -> BrokerAddress:
        return cls(
            settings.broker_host,
            settings.broker_port,
            settings.broker_username,
            settings.broker_password.get_secret_value(),
            connection_name,
        )


CONNECT_BACKOFF_MAX = 30.0


async def connect(address: BrokerAddress) -> AbstractRobustConnection:
    """A connection that reconnects by itself; a wrong password is a ConfigError."""
    try:
        return await aio_pika.connect_robust(
            host=address.host,
            port=address.port,
            login=address.username,
            password=address.password,
            client_properties={"connection_name": address.connection_name},
            reconnect_interval=2,
        )
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise ConfigError(
            f"the broker refused user {address.username!r}: check MESSAGE_BROKER_USERNAME "
            "and MESSAGE_BROKER_PASSWORD"
        ) from exc
    except (OSError, aiormq.exceptions.AMQPConnectionError) as exc:
        reason = str(exc) or type(exc).__name__
        raise BrokerUnavailable(
            f"cannot reach the broker at {address.host}:{address.port}: {reason}"
        ) from exc


async def connect_when_up(
    address: BrokerAddress, stop: asyncio.Event
) -> AbstractRobustConnection | None:
    """Wait for the broker with back-off, so nodes may start before it; None if stopped."""
    delay = 1.0
    while not stop.is_set():
        try:
            return await connect(address)
        except (OSError, aiormq.exceptions.AMQPConnectionError) as exc:
            reason = str(exc) or type(exc).__name__
            log.warning(
                "broker_unreachable",
                host=address.host,
                port=address.port,
                reason=reason,
                retry_in=delay,
            )
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, CONNECT_BACKOFF_MAX)
    return None


DELIVERIES_HEADER = "x-ulos-deliveries"
"""Our count of a message's deliveries, carried across counted requeues."""


class RabbitDelivery:
    """A consumed message as the lifecycle sees it."""

    def __init__(
        self, message: AbstractIncomingMessage, queue: str, publisher: RabbitPublisher
    ) -> None:
        self._message = message
        self._queue = queue
        self._publisher = publisher

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def priority(self) -> int | None:
        return self._message.priority

    @property
    def redelivered(self) -> bool:
        return bool(self._message.redelivered)

    async def ack(self) -> None:
        try:
            await self._message.ack()
        except BROKER_LOST as exc:
            raise SettleFailed(f"cannot ack, broker connection lost: {exc}") from exc

    async def reject(self, requeue: bool) -> None:
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

    async def requeue_counted(self) -> None:
        message = self._message
        headers = {**(message.headers or {}), DELIVERIES_HEADER: self.delivery_count + 1}
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            content_encoding=message.content_encoding,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            priority=message.priority,
            correlation_id=message.correlation_id,
            message_id=message.message_id,
        )
        try:
            await self._publisher.publish_raw(copy, exchange="", routing_key=self._queue)
        except PublishError as exc:
            raise SettleFailed(f"cannot requeue: {exc}") from exc
        await self.ack()


class RabbitPublisher:
    """Confirmed, persistent, mandatory publishing of JSON bodies."""

    def __init__(self, connection: AbstractRobustConnection, channel: AbstractChannel) -> None:
        self._connection = connection
        self._channel = channel
        self._exchanges: dict[str, AbstractExchange] = {}

    @classmethod
    async def open(cls, connection: AbstractRobustConnection) -> RabbitPublisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(connection, channel)

    async def exchange_exists(self, name: str) -> bool:
        """Passive declare on a throwaway channel, so a 404 closes only that channel."""
        if name == "" or name in self._exchanges:
            return True
        if not await _exchange_exists(self._connection, name):
            return False
        self._exchanges[name] = await self._channel.get_exchange(name, ensure=False)
        return True

    async def publish(self, envelope: Envelope) -> None:
        message = aio_pika.Message(
            json.dumps(envelope.body, ensure_ascii=False).encode(),
            content_type="application/json",
            content_encoding="utf-8",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            message_id=envelope.message_id,
            correlation_id=envelope.correlation_id,
            priority=envelope.priority,
        )
        await self.publish_raw(message, envelope.exchange, envelope.routing_key)

    async def publish_raw(self, message: aio_pika.Message, exchange: str, routing_key: str) -> None:
        """Publish a ready message, confirmed and mandatory; PublishError otherwise."""
        where = f"exchange {exchange!r} with routing key {routing_key!r}"
        try:
            if not await self.exchange_exists(exchange):
                raise PublishError(f"{where}: the exchange does not exist")
            target = self._exchanges.get(exchange) or self._channel.default_exchange
            await target.publish(message, routing_key, mandatory=True, timeout=PUBLISH_TIMEOUT)
        except aio_pika.exceptions.PublishError as exc:
            raise PublishError(f"{where}: unroutable, no queue is bound to it") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishError(f"{where}: the broker refused the message") from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            self._exchanges.pop(exchange, None)
            raise PublishError(f"{where}: the exchange does not exist") from exc
        except TimeoutError as exc:
            raise PublishError(f"{where}: no confirm within {PUBLISH_TIMEOUT:g} s") from exc
        except (*BROKER_LOST, aiormq.exceptions.AMQPError) as exc:
            raise PublishError(f"{where}: broker connection lost ({exc!r})") from exc


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
    queue: AbstractQueue,
    publisher: RabbitPublisher,
    on_delivery: Callable[[Delivery], Awaitable[None]],
) -> Callable[[], Awaitable[None]]:
    """Start consuming; returns the function that stops taking new deliveries.

    `publisher` puts counted requeues back on the queue."""

    async def deliver(message: AbstractIncomingMessage) -> None:
        await on_delivery(RabbitDelivery(message, queue.name, publisher))

    tag = await queue.consume(deliver)

    async def stop() -> None:
        try:
            await queue.cancel(tag)
        except BROKER_LOST as exc:
            log.warning("cancel_consumer_failed", reason=str(exc))

    return stop


async def declare_topology(connection: AbstractRobustConnection, topology: Topology) -> None:
    """Declare exchanges, queues and bindings; declaring them again changes nothing."""
    channel = await connection.channel()
    try:
        for spec in topology.exchange:
            what = f"exchange {spec.name!r}"
            await channel.declare_exchange(spec.name, spec.type, durable=spec.durable)
        for queue_spec in topology.queue:
            what = f"queue {queue_spec.name!r}"
            queue = await channel.declare_queue(
                queue_spec.name, durable=queue_spec.durable, arguments=queue_spec.arguments()
            )
            for binding in queue_spec.bind:
                await queue.bind(binding.exchange, binding.routing_key)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigError(
            f"{what} already exists on the broker with different settings ({exc.args[0]}); "
            "delete it or change the file to match"
        ) from exc
    finally:
        if not channel.is_closed:
            await channel.close()


@dataclass(frozen=True)
class Observed:
    """A message as a watcher saw it: where it came from, and its body untouched."""

    exchange: str
    routing_key: str
    body: bytes


@asynccontextmanager
async def observe(
    connection: AbstractRobustConnection,
    bindings: Sequence[tuple[str, str]],
    queue_name: str,
    say: Callable[[str], None],
) -> AsyncIterator[AsyncIterator[Observed]]:
    """A private queue bound to each (exchange, routing key), and what arrives on it.

    The queue is exclusive and auto-deleted: it gets copies of what the exchanges route,
    never another consumer's work, and goes away with the connection. Nothing is acked (a
    watcher that dies loses only its copies). After a lost connection the robust connection
    declares and binds it again; `say` tells the operator, since what was published in
    between is missed.
    """
    exchanges = list(dict.fromkeys(exchange for exchange, _ in bindings))
    missing = [name for name in exchanges if not await _exchange_exists(connection, name)]
    if missing:
        raise ExchangeMissing(_missing_sentence(missing))
    inbox: asyncio.Queue[Observed] = asyncio.Queue()

    async def take(message: AbstractIncomingMessage) -> None:
        inbox.put_nowait(Observed(message.exchange or "", message.routing_key or "", message.body))

    gap = _GapReport(say)
    channel = await connection.channel(publisher_confirms=False)
    try:
        try:
            queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
            for exchange, key in dict.fromkeys(bindings):
                await queue.bind(exchange, key)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:  # deleted since the check
            raise ExchangeMissing(_missing_sentence(exchanges)) from exc
        await queue.consume(take, no_ack=True)
        connection.close_callbacks.add(gap.lost)
        connection.reconnect_callbacks.add(gap.restored)
        yield _drain(inbox)
    finally:
        connection.close_callbacks.discard(gap.lost)
        connection.reconnect_callbacks.discard(gap.restored)
        if not channel.is_closed:
            with suppress(*BROKER_LOST):
                await channel.close()


async def _exchange_exists(connection: AbstractRobustConnection, name: str) -> bool:
    """Passive declare on a throwaway channel, so a 404 closes only that channel."""
    probe = await connection.channel(publisher_confirms=False)
    try:
        await probe.get_exchange(name, ensure=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return False
    finally:
        if not probe.is_closed:
            await probe.close()
    return True


def _missing_sentence(names: list[str]) -> str:
    quoted = " and ".join(repr(name) for name in names)
    if len(names) == 1:
        return (
            f"exchange {quoted} does not exist on the broker (declare it first, e.g. with "
            "`ulos-py topology apply`)"
        )
    return (
        f"exchanges {quoted} do not exist on the broker (declare them first, e.g. with "
        "`ulos-py topology apply`)"
    )


async def _drain(inbox: asyncio.Queue[Observed]) -> AsyncIterator[Observed]:
    while True:
        yield await inbox.get()


class _GapReport:
    """Says once that the connection is lost (restoring may fail many times) and once
    that it is back."""

    def __init__(self, say: Callable[[str], None]) -> None:
        self._say = say
        self._down = False

    def lost(self, _connection: object, exc: BaseException | None = None) -> None:
        if not self._down:
            self._down = True
            self._say(f"broker connection lost ({exc or 'closed'}); reconnecting")

    def restored(self, _connection: object) -> None:
        self._down = False
        self._say("reconnected; notices published while disconnected were missed")
