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
    type: Literal["classic", "quorum"] = "classic"
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
        return self

    def arguments(self) -> dict[str, str | int]:
        """The x-arguments RabbitMQ takes for these options."""
        args: dict[str, str | int] = {}
        if self.type == "quorum":
            args["x-queue-type"] = "quorum"
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
