"""The broker topology a deployment needs, read from a TOML file.

Nodes assume their queues and exchanges exist (declaring them from every node would let
nodes with different ideas fight over arguments); `ulos-py topology apply` declares them
once from a file an operator can read and review.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import Field, model_validator

from ulos_py.errors import ConfigError
from ulos_py.tomlfile import StrictFile, load_toml


class ExchangeSpec(StrictFile):
    name: Annotated[str, Field(min_length=1)]
    type: Literal["direct", "topic", "fanout", "headers"] = "direct"
    durable: bool = True


class BindingSpec(StrictFile):
    exchange: Annotated[str, Field(min_length=1)]
    routing_key: str


class QueueSpec(StrictFile):
    name: Annotated[str, Field(min_length=1)]
    durable: bool = True
    type: Literal["classic", "quorum", "stream"] = "classic"
    """A stream (RabbitMQ 3.9+) keeps its messages for every reader, within `max_age`."""
    max_age: Annotated[str, Field(pattern=r"^[0-9]+[YMDhms]$")] | None = None
    """A stream's retention (`x-max-age`, e.g. `1D`, `12h`); `topology apply` gives a stream
    without one ULOS_CANCEL_RETENTION."""
    max_priority: Annotated[int, Field(ge=1, le=255)] | None = None
    max_length: Annotated[int, Field(ge=0)] | None = None
    dead_letter_exchange: str | None = None
    dead_letter_routing_key: str | None = None
    consumer_timeout_ms: Annotated[int, Field(ge=1)] | None = None
    """The broker's delivery acknowledgement timeout for this queue (`x-consumer-timeout`):
    honoured by RabbitMQ 3.12 to 4.2 on every queue type, from 4.3 on quorum queues only
    (classic queues then have no timeout); older brokers ignore it."""
    delivery_limit: Annotated[int, Field(ge=0)] | None = None
    """Quorum queues only: the broker dead-letters (or drops) a message once it has been
    handed out this many times more (`x-delivery-limit`), whoever returned it: a node's
    reject with requeue, a node that died or lost its connection mid-task. See the README
    on when to prefer it to the node's counted requeues (ULOS_MAX_DELIVERIES)."""
    bind: tuple[BindingSpec, ...] = ()

    @model_validator(mode="after")
    def _fits_its_type(self) -> Self:
        if self.type == "quorum" and self.max_priority is not None:
            raise ValueError(
                "max_priority: quorum queues have no priorities (before RabbitMQ 4.0); "
                "leave it out or make the queue classic"
            )
        if self.type != "quorum" and self.delivery_limit is not None:
            raise ValueError("delivery_limit: only a quorum queue counts deliveries")
        if self.type == "stream":
            refused = [
                name
                for name in ("max_priority", "dead_letter_exchange", "dead_letter_routing_key")
                if getattr(self, name) is not None
            ]
            if refused or not self.durable:
                raise ValueError(
                    f"a stream is durable and takes no {', '.join(refused) or 'durable = false'}"
                )
        elif self.max_age is not None:
            raise ValueError('max_age is for streams (type = "stream")')
        return self

    def arguments(self) -> dict[str, str | int]:
        """The x-arguments RabbitMQ takes for these options."""
        args: dict[str, str | int] = {}
        if self.type != "classic":
            args["x-queue-type"] = self.type
        if self.max_age is not None:
            args["x-max-age"] = self.max_age
        if self.max_priority is not None:
            args["x-max-priority"] = self.max_priority
        if self.max_length is not None:
            args["x-max-length"] = self.max_length
        if self.dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
        if self.dead_letter_routing_key is not None:
            args["x-dead-letter-routing-key"] = self.dead_letter_routing_key
        if self.consumer_timeout_ms is not None:
            args["x-consumer-timeout"] = self.consumer_timeout_ms
        if self.delivery_limit is not None:
            args["x-delivery-limit"] = self.delivery_limit
        return args


class Topology(StrictFile):
    exchange: tuple[ExchangeSpec, ...] = ()
    queue: tuple[QueueSpec, ...] = ()

    def with_stream_retention(self, seconds: float) -> Topology:
        """Streams that name no `max_age` keep `seconds` (ULOS_CANCEL_RETENTION)."""
        age = f"{max(1, round(seconds))}s"
        queues = tuple(
            q.model_copy(update={"max_age": age}) if q.type == "stream" and not q.max_age else q
            for q in self.queue
        )
        return self.model_copy(update={"queue": queues})


def load_topology(path: Path) -> Topology:
    """Read and check a topology file; a problem becomes one ConfigError line."""
    topology = load_toml(path, Topology, "topology")
    declared = {exchange.name for exchange in topology.exchange}
    for queue in topology.queue:
        for binding in queue.bind:
            if binding.exchange not in declared:
                raise ConfigError(
                    f"topology {path}: queue {queue.name!r} binds to exchange "
                    f"{binding.exchange!r}, which the file does not declare"
                )
    return topology


def describe(topology: Topology) -> list[str]:
    """Readable lines, one per declaration, for `topology show`."""
    lines = [
        f"exchange {e.name} ({e.type}, {'durable' if e.durable else 'transient'})"
        for e in topology.exchange
    ]
    for queue in topology.queue:
        extras = ", ".join(f"{k}={v}" for k, v in queue.arguments().items())
        lines.append(f"queue {queue.name}" + (f" ({extras})" if extras else ""))
        lines += [f"  bound to {b.exchange} with key {b.routing_key!r}" for b in queue.bind]
    return lines
