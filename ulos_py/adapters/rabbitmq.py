"""RabbitMQ through aio-pika: the connection, and confirmed mandatory publishing.

Publishing uses its own channel, separate from the consuming one, because a publish to a
missing exchange makes the broker close the channel it came on. Exchanges are checked with
a passive declare on a short-lived channel before their first use, for the same reason.

The adapter is three modules, like the Docker one: this one (connecting, publishing, and
the short-lived channel every one-off operation uses); `rabbitmq_deliveries` (a consumed
delivery, its counted requeues and leases, the prefetch window, consuming); and
`rabbitmq_tooling` (what only operator commands use: declaring a topology, the watcher's
observation). `watch_connection` tells the node's health when the connection drops and
comes back.

With MESSAGE_BROKER_TLS the connection is AMQPS (aio-pika's `ssl` and `ssl_context`); a
certificate we do not trust, or a port that does not speak TLS, is a ConfigError rather than
an outage, so a node stops with one line instead of retrying for ever. The password stays out
of every message: aio-pika shows URLs with `******`, and ours never name it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import cast

import aio_pika
import aiormq
import structlog
from aio_pika.abc import (
    AbstractRobustChannel,
    AbstractRobustConnection,
)
from yarl import URL

from ulos_py.adapters.amqp_transport import CoalescingTransportFactory
from ulos_py.adapters.rabbitmq_cluster import RotatingConnection
from ulos_py.errors import BrokerUnavailable, ConfigError, ConnectionLost, PublishError
from ulos_py.ports import Envelope
from ulos_py.settings import ConnectionSettings, TlsOptions, tls_refusal

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
    peers: tuple[tuple[str, int], ...] = ()
    """More brokers of the same cluster, tried in turn after (host, port)."""
    vhost: str = "/"

    @classmethod
    def of(cls, settings: ConnectionSettings, connection_name: str) -> BrokerAddress:
        (host, port), *peers = settings.broker_endpoints
        return cls(
            host,
            port,
            settings.broker_username,
            settings.broker_password.get_secret_value(),
            connection_name,
            settings.broker_tls_options,
            tuple(peers),
            settings.broker_vhost,
        )

    @property
    def endpoints(self) -> tuple[tuple[str, int], ...]:
        return ((self.host, self.port), *self.peers)

    def describe(self) -> str:
        """For messages: `the broker at h:p`, or every broker of the list."""
        listed = ", ".join(f"{host}:{port}" for host, port in self.endpoints)
        return f"the broker at {listed}" if not self.peers else f"any of the brokers at {listed}"

    def urls(self, first: int = 0) -> tuple[URL, ...]:
        """The brokers' URLs (no password in them), starting with the `first`-th."""
        order = self.endpoints[first:] + self.endpoints[:first]
        scheme = "amqps" if self.tls is not None else "amqp"
        path = "/" if self.vhost == "/" else f"/{self.vhost}"  # aiormq: the path's rest
        return tuple(
            URL.build(scheme=scheme, host=host, port=port, user=self.username, path=path)
            for host, port in order
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
    """A connection that reconnects by itself, to the next broker of the list each time; a
    wrong password or a TLS failure is a ConfigError, no broker answering BrokerUnavailable.

    The first connection tries the brokers in their order; the first to answer wins."""
    failures = []
    for first, (host, port) in enumerate(address.endpoints):
        try:
            return await _connect_from(address, first)
        except BrokerUnavailable as exc:
            failures.append(str(exc))
            log.debug("broker_not_answering", host=host, port=port, reason=str(exc))
    if len(failures) == 1:
        raise BrokerUnavailable(failures[0])
    raise BrokerUnavailable(f"no broker answers: {'; '.join(failures)}")


async def _connect_from(address: BrokerAddress, first: int) -> AbstractRobustConnection:
    host, port = address.endpoints[first]
    where = f"{host}:{port}"
    urls = tuple(url.with_password(address.password) for url in address.urls(first))
    # connect_robust would put extra arguments into the URL's query: built here instead.
    connection = RotatingConnection(
        urls[0],
        endpoints=urls,
        ssl_context=address.tls.context() if address.tls is not None else None,
        client_properties={"connection_name": address.connection_name},
        reconnect_interval=2,
    )
    # Passed on to aiormq as is (aio-pika keeps only the arguments it knows otherwise).
    connection.kwargs["transport_factory"] = CoalescingTransportFactory()
    try:
        try:
            await connection.connect()
        except BaseException:
            # Closed here, not left to aio-pika's __del__, which schedules close() on
            # whatever loop runs when it is collected ("never awaited" if none does).
            with suppress(Exception):
                await connection.close()
            raise
        return connection
    except aiormq.exceptions.ProbableAuthenticationError as exc:
        raise ConfigError(
            f"the broker refused user {address.username!r}: check MESSAGE_BROKER_USERNAME "
            "and MESSAGE_BROKER_PASSWORD"
        ) from exc
    except (OSError, aiormq.exceptions.AMQPConnectionError) as exc:
        if (refusal := tls_refusal(exc, f"the broker at {where}", "MESSAGE_BROKER")) is not None:
            raise refusal from exc
        reason = str(exc) or type(exc).__name__
        raise BrokerUnavailable(
            f"cannot reach the broker at {where}: {reason}{_reset_hint(exc, address.tls)}"
        ) from exc


def current_broker(connection: AbstractRobustConnection) -> str:
    """`host:port` of the broker a connection is on (for health, metrics and logs)."""
    url = getattr(connection, "url", None)
    return f"{url.host}:{url.port}" if isinstance(url, URL) else "?"


def _reset_hint(exc: BaseException, tls: TlsOptions | None) -> str:
    """A broker resets a connection whose TLS it does not like: say which setting may be it."""
    if not isinstance(exc.__cause__, ConnectionResetError):
        return ""
    if tls is None:
        return " (if that port is for TLS, set MESSAGE_BROKER_TLS=true)"
    if tls.cert_file is None:
        return " (if the broker wants a client certificate: MESSAGE_BROKER_TLS_CERT_FILE)"
    return ""


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
                "broker_unreachable", brokers=address.describe(), reason=reason, retry_in=delay
            )
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        delay = min(delay * 2, CONNECT_BACKOFF_MAX)
    return None


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


@asynccontextmanager
async def short_lived_channel(
    connection: AbstractRobustConnection,
) -> AsyncIterator[AbstractRobustChannel]:
    """A channel for one operation the broker may answer by closing it (a missing exchange,
    a refused declaration), so the channels that last are never the ones closed. It is
    closed afterwards unless the broker did so already; a broker lost meanwhile is no error
    of the close (the operation itself says what went wrong)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        yield channel
    finally:
        if not channel.is_closed:
            with suppress(*BROKER_LOST):
                await channel.close()


async def exchange_exists(connection: AbstractRobustConnection, name: str) -> bool:
    """Passive declare on a short-lived channel, so a 404 closes only that channel."""
    async with short_lived_channel(connection) as probe:
        try:
            await probe.get_exchange(name, ensure=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False
    return True


class RabbitPublisher:
    """Confirmed, persistent, mandatory publishing of JSON bodies."""

    def __init__(
        self, connection: AbstractRobustConnection, channel: AbstractRobustChannel
    ) -> None:
        self._connection = connection
        self._channel = channel
        self._exchanges: set[str] = set()
        """Exchanges seen to exist (a 404 on a publish forgets one)."""

    @classmethod
    async def open(cls, connection: AbstractRobustConnection) -> RabbitPublisher:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        return cls(connection, channel)

    async def exchange_exists(self, name: str) -> bool:
        """Whether the exchange exists (see `exchange_exists`), remembered once it does."""
        if name == "" or name in self._exchanges:
            return True
        if not await exchange_exists(self._connection, name):
            return False
        self._exchanges.add(name)
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

    async def _send_and_confirm(
        self, message: aio_pika.Message, exchange: str, routing_key: str
    ) -> None:
        """Hand the message to the connection's writer and wait for the broker's confirm.

        aio-pika's `Exchange.publish` waits, holding the channel's lock, until its frames
        are written before the next publish may queue its own, so each publish is a socket
        write of its own. `wait=False` only queues them (in delivery-tag order, under the
        same lock): publishes issued together, like a task's notices and its forward, leave
        in one write, and each still waits for its own confirm (or return, or nack)."""
        # aiormq's Channel has `wait`; its abstract type does not say so
        channel = cast(aiormq.Channel, await self._channel.get_underlay_channel())
        await channel.basic_publish(
            message.body,
            exchange=exchange,
            routing_key=routing_key,
            properties=message.properties,
            mandatory=True,
            wait=False,
        )

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
                await self._send_and_confirm(message, exchange, routing_key)
        except aio_pika.exceptions.PublishError as exc:
            raise PublishError(f"{where}: unroutable, no queue is bound to it") from exc
        except aio_pika.exceptions.DeliveryError as exc:
            raise PublishError(f"{where}: the broker refused the message") from exc
        except aiormq.exceptions.ChannelNotFoundEntity as exc:
            self._exchanges.discard(exchange)
            raise PublishError(f"{where}: the exchange does not exist") from exc
        except TimeoutError as exc:
            raise PublishError(f"{where}: no confirm within {PUBLISH_TIMEOUT:g} s") from exc
        except BROKER_LOST as exc:
            raise ConnectionLost(f"{where}: broker connection lost ({exc!r})") from exc
        except aiormq.exceptions.AMQPError as exc:
            raise PublishError(f"{where}: broker connection lost ({exc!r})") from exc
