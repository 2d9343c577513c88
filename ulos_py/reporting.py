"""Publishing one delivery's notices without making the task wait on each confirm.

Each notice is sent at once and its confirm collected; `flush` waits for all of them, so the
lifecycle pays one round trip per batch rather than one per notice. A notice the broker
refuses is written to the node's own log as an error: never dropped without a word.

Each log notice is also shown to the delivery's `NoticeObserver` as it is sent: the node's
metrics are derived from the notices (see `ulos_py.metrics`), so the lifecycle has none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

import structlog

from ulos_py.errors import PublishError, TaskCrash
from ulos_py.models import RoutingNode
from ulos_py.notices import DeliveryBudget, Event, NoticeContext, crash_notice, log_notice
from ulos_py.ports import Envelope, Publisher

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class NoticeRoutes:
    """Where log and crash notices go (SPEC §6 MESSAGE_BROKER_*_EXCHANGE/_ROUTING_KEY)."""

    logs_exchange: str
    logs_routing_key: str
    crash_exchange: str
    crash_routing_key: str


class NoticeObserver(Protocol):
    """Sees each log notice of one delivery when it is sent (crashes as their `crashed` log)."""

    def __call__(self, notice: Mapping[str, Any]) -> None: ...


def no_observer() -> NoticeObserver:
    """The default `Deps.observe`: nobody watches."""
    return _ignore


def _ignore(notice: Mapping[str, Any]) -> None:
    pass


class Reporter:
    """The notices of one delivery."""

    def __init__(
        self,
        publisher: Publisher,
        routes: NoticeRoutes,
        context: NoticeContext,
        observer: NoticeObserver = _ignore,
    ) -> None:
        self._publisher = publisher
        self._routes = routes
        self.context = context
        self._observer = observer
        self._pending: list[asyncio.Task[None]] = []

    def carry_task(self, received: dict[str, Any], stage: RoutingNode | None) -> None:
        """Later notices carry the parsed task and its stage."""
        self.context = replace(self.context, received=received, stage=stage)

    def log(self, event: Event, message: str, **fields: Any) -> None:
        body = log_notice(self.context, event, message, **fields)
        self._send(self._routes.logs_exchange, self._routes.logs_routing_key, body)
        try:
            self._observer(body)
        except Exception:  # metrics are never worth a task
            log.exception("notice_observer_failed", event_name=event.value)

    def crash(self, crash: TaskCrash, budget: DeliveryBudget | None = None) -> None:
        body = crash_notice(self.context, crash, budget)
        self._send(self._routes.crash_exchange, self._routes.crash_routing_key, body)
        self.log(Event.CRASHED, body["logMessage"], error=body["error"])

    def _send(self, exchange: str, routing_key: str, body: dict[str, Any]) -> None:
        envelope = Envelope(exchange, routing_key, body, correlation_id=self._task_id())
        self._pending.append(asyncio.create_task(self._publish(envelope)))

    async def _publish(self, envelope: Envelope) -> None:
        try:
            await self._publisher.publish(envelope)
        except PublishError as exc:
            log.error(
                "notice_not_delivered",
                event_name=envelope.body.get("event"),
                exchange=envelope.exchange,
                routing_key=envelope.routing_key,
                reason=str(exc),
                notice=envelope.body,
            )

    def _task_id(self) -> str | None:
        task_id = self.context.received.get("taskId")
        return task_id if isinstance(task_id, str) else None

    async def flush(self) -> None:
        """Wait until every notice so far is confirmed or reported as lost."""
        pending, self._pending = self._pending, []
        if pending:
            await asyncio.gather(*pending)
