"""RabbitMQ through aio-pika: confirmed mandatory publishing and a consuming queue.

Publishing uses its own channel, separate from the consuming one, because a publish to a
missing exchange makes the broker close the channel it came on. Exchanges are checked with
a passive declare on a throwaway channel before their first use, for the same reason.

`observe` is the watcher's side: a private queue bound to the notice exchanges.
`watch_connection` tells the node's health when the connection drops and comes back.

With MESSAGE_BROKER_TLS the connection is AMQPS (aio-pika's `ssl` and `ssl_context`); a
certificate we do not trust, or a port that does not speak TLS, is a ConfigError rather than
an outage, so a node stops with one line instead of retrying for ever. The password stays out
of every message: aio-pika shows URLs with `******`, and ours never name it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractExchange,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustChannel,
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
from ulos_py.settings import ConnectionSettings, TlsOptions
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
    password: str = field(repr=False)
    connection_name: str
    tls: TlsOptions | None = None
    """AMQPS when set."""

    @classmethod
    def of(cls, settings: ConnectionSettings, connection_name: str) -> BrokerAddress:
        return cls(
            settings.broker_host,
            settings.broker_port,
            settings.broker_username,
            settings.broker_password.get_secret_value(),
            connection_name,
            settings.broker_tls_options,
        )


CONNECT_BACKOFF_MAX = 30.0


class _ReportedByCaller(logging.Filter):
    """aiormq logs every failed connect at ERROR just before raising it. The caller reports
    it (`connect` as one line of ours, aio-pika's reconnect loop as a warning), so the record
    only says it twice, and in an operator command as a second, unformatted line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("error when creating transport")


logging.getLogger("aiormq.connection").addFilter(_ReportedByCaller())


async def connect(address: BrokerAddress) -> AbstractRobustConnection:
    """A connection that reconnects by itself; a wrong password or a TLS failure is a
    ConfigError, an unreachable broker BrokerUnavailable."""
    where = f"{address.host}:{address.port}"
    try:
        return await aio_pika.connect_robust(
            host=address.host,
            port=address.port,
            login=address.username,
            password=address.password,
            ssl=address.tls is not None,
            ssl_context=address.tls.context() if address.tls is not None else None,
            client_properties={"connection_name": address.connection_name},
            reconnect_interval=2,
        )
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise ConfigError(
            f"the broker refused user {address.username!r}: check MESSAGE_BROKER_USERNAME "
            "and MESSAGE_BROKER_PASSWORD"
        ) from exc
    except (OSError, aiormq.exceptions.AMQPConnectionError) as exc:
        if (refusal := _tls_refusal(exc, f"the broker at {where}", "MESSAGE_BROKER")) is not None:
            raise refusal from exc
        reason = str(exc) or type(exc).__name__
        raise BrokerUnavailable(
            f"cannot reach the broker at {where}: {reason}{_reset_hint(exc, address.tls)}"
        ) from exc


def _reset_hint(exc: BaseException, tls: TlsOptions | None) -> str:
    """A broker resets a connection whose TLS it does not like: say which setting may be it."""
    if not isinstance(exc.__cause__, ConnectionResetError):
        return ""
    if tls is None:
        return " (if that port is for TLS, set MESSAGE_BROKER_TLS=true)"
    if tls.cert_file is None:
        return " (if the broker wants a client certificate: MESSAGE_BROKER_TLS_CERT_FILE)"
    return ""


def _tls_refusal(exc: BaseException, who: str, prefix: str) -> ConfigError | None:
    """The ConfigError for a TLS handshake that failed (aiormq wraps the ssl error), if
    that is what `exc` is: retrying cannot help, the settings or the certificate must change."""
    cause = exc if isinstance(exc, ssl.SSLError) else exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return ConfigError(
            f"{who} showed a certificate that is not trusted ({cause.verify_message}): check "
            f"{prefix}_TLS_CA_FILE (the CA that signed it), {prefix}_HOST (a name the "
            f"certificate holds) or {prefix}_TLS_VERIFY"
        )
    if isinstance(cause, ssl.SSLError):
        reason = str(cause.reason or cause)
        check = (  # the server's alert about our certificate, e.g. CERTIFICATE_REQUIRED
            f"{prefix}_TLS_CERT_FILE and {prefix}_TLS_KEY_FILE (a client certificate it trusts)"
            if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason)
            else f"that {prefix}_PORT is its TLS port and {prefix}_TLS"
        )
        return ConfigError(f"TLS with {who} failed ({reason}): check {check}")
    return None


async def connect_when_up(
    address: BrokerAddress, stop: asyncio.Event
) -> AbstractRobustConnection | None:
    """Wait for the broker with back-off, so nodes may start before it; None if stopped."""
    delay = 1.0
    while not stop.is_set():
        try:
            return await connect(address)
        except BrokerUnavailable as exc:
            reason = str(exc)
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

LEASE_PREFIX = "ulos-lease."
"""Names of the queues that hold leased tasks (see `RabbitDelivery.detach`). A broker user
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


class RabbitDelivery:
    """A consumed message as the lifecycle sees it."""

    def __init__(
        self,
        message: AbstractIncomingMessage,
        queue: str,
        publisher: RabbitPublisher,
        window: PrefetchWindow | None = None,
    ) -> None:
        self._message = message
        self._queue = queue
        self._publisher = publisher
        self._window = window
        """The consumer's prefetch window, which a lease narrows while it lasts."""
        self._lease: str | None = None
        """The lease queue holding the task once `detach` took it off the delivery."""

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
        if self._lease is not None:
            await self._release_lease()
            return
        try:
            await self._message.ack()
        except BROKER_LOST as exc:
            raise SettleFailed(f"cannot ack, broker connection lost: {exc}") from exc

    async def reject(self, requeue: bool) -> None:
        if self._lease is not None:
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

    async def detach(self, seconds: float) -> bool:
        """Lease the task: a confirmed copy goes into a queue of its own whose TTL is `seconds`
        and whose dead-letter target is this delivery's queue, then the delivery is acked.

        While the node lives it settles the lease (`ack` deletes it; `reject` and
        `requeue_counted` put a copy back on the queue first); if the node dies, the broker
        dead-letters the task back to its queue when the TTL runs out. A lease uses only
        what every RabbitMQ since 3.0 has (message TTL, dead-lettering, queue expiry).
        """
        if self._lease is not None:
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
            await self._publisher.declare_queue(name, arguments)
            await self._publisher.publish_raw(self._copy(self.delivery_count + 1), "", name)
        except PublishError as exc:
            log.warning("lease_refused", lease=name, reason=str(exc))
            await self._publisher.delete_queue(name)
            return False
        if self._window is not None:
            await self._window.narrow()  # before the ack frees the delivery's place
        try:
            await self._message.ack()
        except BROKER_LOST as exc:
            await self._publisher.delete_queue(name)  # the broker delivers the task again
            if self._window is not None:
                await self._window.widen()
            raise SettleFailed(f"cannot lease the task, broker connection lost: {exc}") from exc
        self._lease = name
        return True

    async def _release_lease(self) -> None:
        """The leased task is settled: delete its lease, which nobody may run again."""
        assert self._lease is not None
        try:
            held = await self._publisher.delete_queue(self._lease)
        finally:  # the task no longer holds a slot of the node, whatever the broker said
            if self._window is not None:
                await self._window.widen()
        if held is None:
            raise SettleFailed(f"cannot delete the lease {self._lease}: broker connection lost")
        if held == 0:  # the TTL ran out first: the broker has given the task back already
            log.warning("lease_expired", lease=self._lease, queue=self._queue)

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


class RabbitPublisher:
    """Confirmed, persistent, mandatory publishing of JSON bodies."""

    def __init__(
        self, connection: AbstractRobustConnection, channel: AbstractRobustChannel
    ) -> None:
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
            # One deadline for the whole publish: `wait_for` would wrap each wait in a task
            # of its own, a cost paid by every notice of every task.
            async with asyncio.timeout(PUBLISH_TIMEOUT):
                # After a reconnect aio-pika restores channels in any order: the consuming one
                # may deliver before this one is back, and a publish then would fail (and lose
                # a crash notice). Wait for it.
                await self._channel.ready()
                if not await self.exchange_exists(exchange):
                    raise PublishError(f"{where}: the exchange does not exist")
                target = self._exchanges.get(exchange) or self._channel.default_exchange
                await target.publish(message, routing_key, mandatory=True)
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

    async def declare_queue(self, name: str, arguments: dict[str, str | int]) -> None:
        """Declare a durable queue on a throwaway channel (a refusal closes only that one);
        PublishError if the broker refuses (a user without configure permission, say)."""
        channel = await self._connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(name, durable=True, arguments=arguments)
        except (*BROKER_LOST, aiormq.exceptions.AMQPError) as exc:
            raise PublishError(f"cannot declare queue {name!r}: {exc}") from exc
        finally:
            if not channel.is_closed:
                with suppress(*BROKER_LOST):
                    await channel.close()

    async def delete_queue(self, name: str) -> int | None:
        """Delete a queue on a throwaway channel; how many messages it held (0 if it was
        gone already), or None if the broker could not be asked."""
        try:
            channel = await self._connection.channel(publisher_confirms=False)
        except (*BROKER_LOST, aiormq.exceptions.AMQPError) as exc:
            log.warning("queue_delete_failed", queue=name, reason=str(exc))
            return None
        try:
            deleted = await channel.queue_delete(name)
        except (*BROKER_LOST, aiormq.exceptions.AMQPError) as exc:
            log.warning("queue_delete_failed", queue=name, reason=str(exc))
            return None
        finally:
            if not channel.is_closed:
                with suppress(*BROKER_LOST):
                    await channel.close()
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
    queue: AbstractQueue,
    publisher: RabbitPublisher,
    on_delivery: Callable[[Delivery], Awaitable[None]],
    prefetch: int = 0,
) -> Callable[[], Awaitable[None]]:
    """Start consuming; returns the function that stops taking new deliveries.

    `publisher` puts counted requeues and leases back on the queue; `prefetch` is the
    channel's prefetch count (0: none), whose window leases narrow (see PrefetchWindow)."""

    async def deliver(message: AbstractIncomingMessage) -> None:
        if _rejected_for_good(message):  # its node decided and reported; the queue dead-letters
            log.info("leased_task_rejected", queue=queue.name, message_id=message.message_id)
            with suppress(*BROKER_LOST):  # if not, the broker delivers it again
                await message.reject(requeue=False)
            return
        await on_delivery(RabbitDelivery(message, queue.name, publisher, window))

    window = PrefetchWindow(queue, prefetch, deliver)
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


def watch_connection(
    connection: AbstractRobustConnection, on_change: Callable[[bool], None]
) -> Callable[[], None]:
    """Tell `on_change` False when the connection is lost (and on each failed attempt to
    restore it) and True once it is back with its channels and consumers; returns the
    function that stops telling."""

    def lost(_connection: object, _exc: BaseException | None = None) -> None:
        on_change(False)

    def restored(_connection: object) -> None:
        on_change(True)

    connection.close_callbacks.add(lost)
    connection.reconnect_callbacks.add(restored)

    def forget() -> None:
        connection.close_callbacks.discard(lost)
        connection.reconnect_callbacks.discard(restored)

    return forget


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
