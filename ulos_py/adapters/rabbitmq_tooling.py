"""RabbitMQ for operator commands only: declaring a deployment's topology (`topology
apply`) and observing the notice exchanges (`watch`). A node never runs this code."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiormq
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from ulos_py.adapters.rabbitmq import exchange_exists, short_lived_channel
from ulos_py.errors import ConfigError, ExchangeMissing
from ulos_py.topology import Topology


async def declare_topology(connection: AbstractRobustConnection, topology: Topology) -> None:
    """Declare exchanges, queues and bindings; declaring them again changes nothing."""
    what = "the topology"
    try:
        async with short_lived_channel(connection) as channel:
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
    missing = [name for name in exchanges if not await exchange_exists(connection, name)]
    if missing:
        raise ExchangeMissing(_missing_sentence(missing))
    inbox: asyncio.Queue[Observed] = asyncio.Queue()

    async def take(message: AbstractIncomingMessage) -> None:
        inbox.put_nowait(Observed(message.exchange or "", message.routing_key or "", message.body))

    gap = _GapReport(say)
    async with short_lived_channel(connection) as channel:  # lives as long as the watcher
        try:
            queue = await channel.declare_queue(queue_name, exclusive=True, auto_delete=True)
            for exchange, key in dict.fromkeys(bindings):
                await queue.bind(exchange, key)
        except aiormq.exceptions.ChannelNotFoundEntity as exc:  # deleted since the check
            raise ExchangeMissing(_missing_sentence(exchanges)) from exc
        await queue.consume(take, no_ack=True)
        connection.close_callbacks.add(gap.lost)
        connection.reconnect_callbacks.add(gap.restored)
        try:
            yield _drain(inbox)
        finally:
            connection.close_callbacks.discard(gap.lost)
            connection.reconnect_callbacks.discard(gap.restored)


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
