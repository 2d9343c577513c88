"""Pure builders of the log and crash notices of SPEC §4.

A notice is the task as received (unknown fields too) plus what happened, so a downstream
system can follow a task by any field it already knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from ulos_py.errors import MalformedTask, TaskCancelled, TaskCrash
from ulos_py.models import RoutingNode

RAW_BODY_LIMIT = 4096
"""Bytes of a malformed body kept in its crash notice: enough to debug, not a payload copy."""


class Event(StrEnum):
    """The machine word of a notice."""

    RECEIVED = "received"
    """A delivery was taken and parsed."""
    DOWNLOADED = "downloaded"
    """The zip is on the node and checked."""
    LEASED = "leased"
    """The task may outlast the broker's consumer timeout: a lease holds it while it runs."""
    EXECUTION_STARTED = "execution_started"
    """The executor got the working directory."""
    EXECUTION_FINISHED = "execution_finished"
    """The executor decided; `outcome` says how."""
    UPLOADED = "uploaded"
    """The results are back in storage."""
    FORWARDED = "forwarded"
    """The broker confirmed the task on its next stage."""
    COMPLETED = "completed"
    """No branch follows the outcome: the task's journey ends here."""
    ACKED = "acked"
    """The input was acknowledged."""
    REJECTED = "rejected"
    """The input was rejected; `requeued` says whether it goes back to the queue."""
    CRASHED = "crashed"
    """The task crashed; the crash notice carries the reason."""


@dataclass(frozen=True)
class NoticeContext:
    """What every notice of one delivery repeats."""

    node_id: str
    received: dict[str, Any]
    stage: RoutingNode | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _stage(stage: RoutingNode | None) -> dict[str, str] | None:
    if stage is None:
        return None
    return {"exchange": stage.exchange, "routingKey": stage.routing_key}


def log_notice(ctx: NoticeContext, event: Event, message: str, **fields: Any) -> dict[str, Any]:
    """A log notice: one step of a task, in a sentence and a machine word."""
    return {
        **ctx.received,
        "logMessage": message,
        "event": event.value,
        "nodeId": ctx.node_id,
        "timestamp": _now(),
        "stage": _stage(ctx.stage),
        **fields,
    }


@dataclass(frozen=True)
class DeliveryBudget:
    """How many deliveries a crashing task has used of the ULOS_MAX_DELIVERIES it may."""

    delivery: int
    limit: int

    @property
    def spent(self) -> bool:
        """No requeue is left: this crash rejects the task for good."""
        return self.delivery >= self.limit


def crash_notice(
    ctx: NoticeContext, crash: TaskCrash, budget: DeliveryBudget | None = None
) -> dict[str, Any]:
    """A crash notice: why the task ended without an outcome (and, when crashed tasks are
    requeued, whether this one will be tried again)."""
    detail = crash.detail
    error: dict[str, Any] = {"kind": crash.kind.value, "detail": detail}
    if budget is not None:
        error["delivery"], error["maxDeliveries"] = budget.delivery, budget.limit
        error["requeued"] = not budget.spent
        if budget.spent:
            detail += (
                f"; crashed on delivery {budget.delivery} of at most {budget.limit} "
                "(ULOS_MAX_DELIVERIES): not requeued again"
            )
            error["detail"] = detail
    notice = log_notice(ctx, Event.CRASHED, f"{crash.kind.value}: {detail}", error=error)
    if isinstance(crash, TaskCancelled):  # for a journey to show who stopped it, and why
        error.update(cancelledBy=crash.by, reason=crash.reason, cancelledAt=crash.at)
    if isinstance(crash, MalformedTask):
        error["errors"] = crash.errors
        notice["rawBody"] = crash.raw_body[:RAW_BODY_LIMIT].decode("utf-8", errors="replace")
        notice["rawBodyTruncated"] = len(crash.raw_body) > RAW_BODY_LIMIT
    return notice
