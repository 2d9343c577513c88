"""Pure: a task's journey — its visits of stages and its state — folded from its notices.

A task's notices come from several nodes over two exchanges, so they arrive in no useful
order: the next stage's node may report `received` before the previous node's `forwarded`
lands, a crash arrives twice (crash notice and log), and a redelivered notice comes again.
So the journey is a function of the *set* of notices, never of their arrival: identical
bodies count once, and the set is folded in the order things happened (each notice's
timestamp, then the order of steps within a stage, then the body itself as a last tie-break).
`watch`, `status`, the tracker and its pages all read tasks through this one fold. No I/O.

    bodies → Notice (lenient reading) → journey(task_id, notices) → Journey (visits) → state
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cached_property
from typing import Any, Generic, TypeVar, overload

from pydantic_core import from_json

from ulos_py.notices import Event

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

STEP_ORDER = (
    Event.RECEIVED,
    Event.DOWNLOADED,
    Event.LEASED,
    Event.EXECUTION_STARTED,
    Event.EXECUTION_FINISHED,
    Event.UPLOADED,
    Event.FORWARDED,
    Event.COMPLETED,
    Event.CRASHED,
    Event.REJECTED,
    Event.ACKED,
)
"""The order of a visit's steps, which breaks ties between notices of the same instant."""
_RANK = {event.value: rank for rank, event in enumerate(STEP_ORDER)}


class State(StrEnum):
    """Where a task stands (SPEC §10)."""

    WAITING = "waiting"
    """Forwarded to a stage (or back in its queue) and not yet received there."""
    RUNNING = "running"
    """A node received it and has not ended the visit."""
    PASSED = "passed"
    """Completed: the last stage passed and no stage follows."""
    FAILED = "failed"
    """Completed: the last stage failed and no stage follows."""
    CRASHED = "crashed"
    """A crash that did not send the task back to its queue."""
    CANCELLED = "cancelled"
    """An operator cancelled it (SPEC §8): a crash of kind `cancelled`, never requeued."""
    STUCK = "stuck"
    """Waiting or running for longer than it should."""
    DELIVERED = "delivered"
    """Forwarded to the end of its routing tree (a result queue) and not taken by a node."""


OPEN_STATES = frozenset({State.WAITING, State.RUNNING})
"""States in which a task may still become stuck."""


@dataclass(frozen=True)
class StageKey:
    """Where a stage is served: the routing node's exchange and routing key."""

    exchange: str
    routing_key: str

    @classmethod
    def of(cls, value: object) -> StageKey | None:
        """The `{exchange, routingKey}` of a notice's `stage` or `target`, if well-formed."""
        if not isinstance(value, dict):
            return None
        exchange, key = value.get("exchange"), value.get("routingKey")
        if not isinstance(exchange, str) or not isinstance(key, str):
            return None
        return cls(exchange, key)

    def as_dict(self) -> dict[str, str]:
        return {"exchange": self.exchange, "routingKey": self.routing_key}


@dataclass(frozen=True)
class Forwarded:
    """The broker confirmed the task on its next stage (None: the notice did not say where)."""

    target: StageKey | None
    final: bool = False
    """The target has no further decisions: the end of the routing tree."""


@dataclass(frozen=True)
class Completed:
    """No branch follows the outcome: the journey ended at this stage."""


CANCELLED_KIND = "cancelled"
"""The crash kind of a cancelled task (SPEC §4, §8)."""


@dataclass(frozen=True)
class Cancelled:
    """Who cancelled a task, why and when, as its crash notice says (`error.cancelledBy`,
    `error.reason`, `error.cancelledAt`); a field the notice lacks is None."""

    by: str | None = None
    reason: str | None = None
    at: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {"cancelledBy": self.by, "reason": self.reason, "cancelledAt": self.at}


@dataclass(frozen=True)
class Crashed:
    """The stage ended without an outcome; `kind` is SPEC §4 `error.kind`."""

    kind: str
    detail: str
    requeued: bool = False
    """The crash notice says the task went back to its queue for another attempt."""
    cancelled: Cancelled | None = None
    """Who cancelled it and why, for a crash of kind `cancelled`."""

    def as_dict(self) -> dict[str, Any]:
        """`{kind, detail}`, plus `cancelledBy`, `reason` and `cancelledAt` when cancelled."""
        found: dict[str, Any] = {"kind": self.kind, "detail": self.detail}
        if self.cancelled is not None:
            found.update(self.cancelled.as_dict())
        return found


End = Forwarded | Completed | Crashed


_T = TypeVar("_T")

_CANONICAL = json.JSONEncoder(
    sort_keys=True, ensure_ascii=False, separators=(",", ":"), check_circular=False
)
"""Notice bodies in canonical form (one encoder, not one per notice as `json.dumps` makes).
A parsed body holds no cycle: the check for one was a tenth of the encoding."""


class _cached(Generic[_T]):
    """`functools.cached_property` without the lock it takes on every first read before
    Python 3.12: the tracker reads four of these on every notice it folds."""

    def __init__(self, compute: Callable[[Any], _T]) -> None:
        self._compute = compute
        self._name = compute.__name__
        self.__doc__ = compute.__doc__

    @overload
    def __get__(self, instance: None, owner: type) -> _cached[_T]: ...
    @overload
    def __get__(self, instance: object, owner: type) -> _T: ...
    def __get__(self, instance: object | None, owner: type) -> _T | _cached[_T]:
        if instance is None:
            return self
        value = instance.__dict__[self._name] = self._compute(instance)
        return value


@dataclass(frozen=True)
class Notice:
    """One notice body, read leniently: a missing or odd field is None, never an error."""

    body: dict[str, Any]

    @_cached
    def task_id(self) -> str | None:
        value = self.body.get("taskId")
        return value if isinstance(value, str) and value else None

    @_cached
    def event(self) -> str:
        value = self.body.get("event")
        return value if isinstance(value, str) else "?"

    @_cached
    def stage(self) -> StageKey | None:
        return StageKey.of(self.body.get("stage"))

    @property
    def node_id(self) -> str | None:
        value = self.body.get("nodeId")
        return value if isinstance(value, str) else None

    @property
    def outcome(self) -> str | None:
        value = self.body.get("outcome")
        return value if isinstance(value, str) else None

    @property
    def requeued(self) -> bool:
        return self.body.get("requeued") is True

    @property
    def crash(self) -> Crashed:
        error = self.body.get("error")
        error = error if isinstance(error, dict) else {}
        kind, detail = error.get("kind"), error.get("detail")
        cancelled = None
        if kind == CANCELLED_KIND:
            by, reason, at = (error.get(k) for k in ("cancelledBy", "reason", "cancelledAt"))
            cancelled = Cancelled(*(v if isinstance(v, str) else None for v in (by, reason, at)))
        return Crashed(
            kind if isinstance(kind, str) else "?",
            detail if isinstance(detail, str) else str(self.body.get("logMessage", "")),
            error.get("requeued") is True,
            cancelled,
        )

    @_cached
    def timestamp(self) -> datetime | None:
        value = self.body.get("timestamp")
        if not isinstance(value, str):
            return None
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
        return when if when.tzinfo is not None else when.replace(tzinfo=UTC)

    @classmethod
    def stored(cls, identity: str) -> Notice:
        """A notice from its identity (the canonical body a store keeps), which it reuses."""
        notice = cls(_parsed(identity))
        notice.__dict__["identity"] = identity  # what the cached property would compute
        return notice

    @_cached
    def identity(self) -> str:
        """The body in canonical form: equal for a notice and its redelivered copy."""
        return _CANONICAL.encode(self.body)

    def order(self) -> tuple[datetime, int, str]:
        """When it happened: its time, its place among a visit's steps, then its body."""
        return (self.timestamp or EPOCH, _RANK.get(self.event, len(_RANK)), self.identity)


def read_notice(raw: bytes) -> Notice | None:
    """The notice in a message body; None when the body is not a JSON object."""
    try:
        body = _parsed(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested beyond reason
        return None
    return Notice(body) if isinstance(body, dict) else None


def _parsed(data: bytes | str) -> Any:
    """JSON read by pydantic-core's parser, in 40 % of the standard library's time (the
    tracker reads every notice, and again each stored one its task's next notice folds
    with); what it refuses (UTF-16, a byte-order mark, nesting past its limit) is read by
    the standard library as before."""
    try:
        return from_json(data)
    except (ValueError, TypeError):  # TypeError: a str it cannot make UTF-8 (a lone surrogate)
        return json.loads(data)


@dataclass(frozen=True)
class StageVisit:
    """One delivery of a task to a stage, as far as its notices tell."""

    stage: StageKey | None
    """None when the task had no routing tree (or the notice no stage)."""
    last_event: str
    attempt: int = 1
    """1 for a stage's first visit; one more for each redelivery or requeue to it."""
    node_id: str | None = None
    steps: tuple[tuple[str, datetime], ...] = ()
    """Each event of the visit with the time it first happened, in that order."""
    outcome: str | None = None
    """The executor's `pass` or `fail`, once it decided."""
    end: End | None = None
    settled: str | None = None
    """`acked` or `rejected`, once the node settled the delivery."""
    requeued: bool = False
    """The delivery went back to its queue (a rejected requeue, or a crash that says so)."""

    @property
    def open(self) -> bool:
        """Still running: neither ended nor settled."""
        return self.end is None and self.settled is None

    @property
    def started(self) -> datetime | None:
        return self.steps[0][1] if self.steps else None

    def durations(self) -> dict[str, float]:
        """Seconds from the step before to each step (the first step has none)."""
        return {
            event: (when - before).total_seconds()
            for (_, before), (event, when) in zip(self.steps, self.steps[1:], strict=False)
        }

    def as_dict(self) -> dict[str, Any]:
        """The SPEC §10 shape of a visit."""
        forwarded = self.end.target if isinstance(self.end, Forwarded) else None
        crash = self.end if isinstance(self.end, Crashed) else None
        return {
            "stage": self.stage.as_dict() if self.stage else None,
            "nodeId": self.node_id,
            "attempt": self.attempt,
            "steps": {event: _rfc3339(when) for event, when in self.steps},
            "durations": self.durations(),
            "outcome": self.outcome,
            "crash": crash.as_dict() if crash else None,
            "forwardedTo": forwarded.as_dict() if forwarded else None,
            "settled": self.settled,
            "requeued": self.requeued,
        }


@dataclass(frozen=True)
class Journey:
    """A task's journey: every stage visit, in the order they began, and its fields."""

    task_id: str
    visits: tuple[StageVisit, ...] = ()
    owner: str | None = None
    file_path: str | None = None
    timeout: float | None = None
    first_seen: datetime | None = None
    updated_at: datetime | None = None

    @property
    def current(self) -> StageVisit | None:
        """The stage the task is at: the latest visit, while it runs."""
        if self.visits and self.visits[-1].open:
            return self.visits[-1]
        return None

    @property
    def last(self) -> StageVisit | None:
        return self.visits[-1] if self.visits else None

    @property
    def passed(self) -> tuple[StageVisit, ...]:
        """The visits the task went through and on: those that forwarded or completed."""
        return tuple(v for v in self.visits if isinstance(v.end, Forwarded | Completed))

    @property
    def end(self) -> End | None:
        """How the latest visit ended; None while it runs (or if its end was not seen)."""
        last = self.last
        return last.end if last is not None else None

    @property
    def cancelled(self) -> Cancelled | None:
        """Who cancelled the task and why, once its latest visit ended cancelled."""
        end = self.end
        return end.cancelled if isinstance(end, Crashed) else None

    def state(self) -> State:
        """Where the task stands, without the clock (see `state_at` for `stuck`)."""
        last = self.last
        if last is None:
            return State.WAITING
        end = last.end
        if isinstance(end, Forwarded):
            return State.DELIVERED if end.final else State.WAITING
        if isinstance(end, Completed) or (end is None and last.settled == Event.ACKED):
            return State.PASSED if last.outcome == "pass" else State.FAILED
        if isinstance(end, Crashed) and end.cancelled is not None:
            return State.CANCELLED  # acked by the node whatever it says of requeues
        if isinstance(end, Crashed) or last.settled == Event.REJECTED:
            return State.WAITING if last.requeued else State.CRASHED
        return State.RUNNING

    @cached_property
    def stage(self) -> StageKey | None:
        """Where the task is: the stage it waits at or runs in, ended at, or went to."""
        last = self.last
        if last is None:
            return None
        if isinstance(last.end, Forwarded) and last.end.target is not None:
            return last.end.target
        return last.stage

    def stuck_at(self, stuck_after: timedelta) -> datetime | None:
        """When the task counts as stuck if nothing changes: waiting `stuck_after` since its
        last change, or running past its own timeout plus `stuck_after`; None once ended."""
        state, last = self.state(), self.last
        if state == State.WAITING and self.updated_at is not None:
            return self.updated_at + stuck_after
        if state == State.RUNNING and last is not None and last.started is not None:
            return last.started + timedelta(seconds=self.timeout or 0) + stuck_after
        return None

    def state_at(self, now: datetime, stuck_after: timedelta) -> State:
        stuck_at = self.stuck_at(stuck_after)
        return State.STUCK if stuck_at is not None and stuck_at <= now else self.state()


def journey(task_id: str, notices: Iterable[Notice]) -> Journey:
    """The journey its notices tell, the same in whatever order or how often they came.

    Folded into drafts of visits changed in place and the task's fields, frozen once at the
    end: a copy of the journey, then of a visit, per notice was most of the fold's cost (the
    tracker folds every notice)."""
    unique = {notice.identity: notice for notice in notices if notice.task_id == task_id}
    visits: list[_Visit] = []
    fields = _Fields()
    for notice in sorted(unique.values(), key=Notice.order):
        fields.take(notice)
        _fold(visits, notice)
    return Journey(
        task_id,
        tuple(visit.freeze() for visit in visits),
        fields.owner,
        fields.file_path,
        fields.timeout,
        fields.first_seen,
        fields.updated_at,
    )


def _fold(visits: list[_Visit], notice: Notice) -> None:
    """The visits after one more notice, taken in the order things happened.

    A notice joins the latest visit of the stage it names. `received` starts a new visit:
    the next attempt of that stage after a crash, a reject or a node that vanished, or a
    first attempt when the stage's latest visit went on (a tree may come back to a stage).
    """
    stage, event = notice.stage, notice.event
    before = _latest_visit(visits, stage)
    if before is None or event == Event.RECEIVED:
        attempt = 1
        if before is not None:
            went_on = isinstance(before.end, Forwarded | Completed)
            attempt = 1 if went_on or before.settled == Event.ACKED else before.attempt + 1
        before = _Visit(stage, attempt, notice.node_id)
        visits.append(before)
    before.take(notice)


@dataclass
class _Fields:
    """The task's own fields while folding: the latest value each notice gives."""

    owner: str | None = None
    file_path: str | None = None
    timeout: float | None = None
    first_seen: datetime | None = None
    updated_at: datetime | None = None

    def take(self, notice: Notice) -> None:
        body, when = notice.body, notice.timestamp
        owner, path, timeout = body.get("taskOwnerId"), body.get("filePath"), body.get("timeout")
        if isinstance(owner, str):
            self.owner = owner
        if isinstance(path, str):
            self.file_path = path
        if isinstance(timeout, int | float) and not isinstance(timeout, bool):
            self.timeout = timeout
        self.first_seen = self.first_seen or when
        self.updated_at = when or self.updated_at


def _latest_visit(visits: list[_Visit], stage: StageKey | None) -> _Visit | None:
    for index in range(len(visits) - 1, -1, -1):
        if visits[index].stage == stage:
            return visits[index]
    return None


class _Visit:
    """A stage visit while folding, changed in place by each notice; `freeze` makes the
    `StageVisit` once the fold is done."""

    __slots__ = (
        "attempt",
        "end",
        "last_event",
        "node_id",
        "outcome",
        "requeued",
        "settled",
        "stage",
        "steps",
    )

    def __init__(self, stage: StageKey | None, attempt: int, node_id: str | None) -> None:
        self.stage, self.attempt, self.node_id = stage, attempt, node_id
        self.last_event = ""
        self.steps: list[tuple[str, datetime]] = []
        self.outcome: str | None = None
        self.end: End | None = None
        self.settled: str | None = None
        self.requeued = False

    def take(self, notice: Notice) -> None:
        """What one notice adds to its stage visit; a repeated step adds nothing new."""
        event, when = notice.event, notice.timestamp
        self.last_event = event
        self.node_id = self.node_id or notice.node_id
        if when is not None and all(step != event for step, _ in self.steps):
            self.steps.append((event, when))
        if event == Event.EXECUTION_FINISHED:
            self.outcome = notice.outcome
        elif event == Event.FORWARDED:
            target = StageKey.of(notice.body.get("target"))
            self.end = Forwarded(target, _final(notice.body, target))
        elif event == Event.COMPLETED:
            self.end = Completed()
        elif event == Event.CRASHED:
            crash = self.end = notice.crash
            self.requeued = self.requeued or crash.requeued
        elif event == Event.ACKED:
            self.settled = event
        elif event == Event.REJECTED:
            self.settled, self.requeued = event, self.requeued or notice.requeued

    def freeze(self) -> StageVisit:
        return StageVisit(
            self.stage,
            self.last_event,
            self.attempt,
            self.node_id,
            tuple(self.steps),
            self.outcome,
            self.end,
            self.settled,
            self.requeued,
        )


def _final(body: dict[str, Any], target: StageKey | None) -> bool:
    """Whether the forward went to a routing node without further decisions."""
    tree = body.get("routingTree")
    if target is None or not isinstance(tree, dict):
        return False
    branches = (tree.get("successRoutingDecision"), tree.get("failureRoutingDecision"))
    for branch in branches:
        if isinstance(branch, dict) and StageKey.of(branch) == target:
            return not branch.get("successRoutingDecision") and not branch.get(
                "failureRoutingDecision"
            )
    return False


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def journey_dict(view: Journey, state: State) -> dict[str, Any]:
    """The SPEC §10 shape of one task's journey, as the API and `status --json` give it."""
    stage = view.stage
    return {
        "taskId": view.task_id,
        "taskOwnerId": view.owner,
        "filePath": view.file_path,
        "state": state.value,
        "stage": stage.as_dict() if stage else None,
        "firstSeen": _rfc3339(view.first_seen) if view.first_seen else None,
        "updatedAt": _rfc3339(view.updated_at) if view.updated_at else None,
        **cancel_fields(view.cancelled),
        "visits": [visit.as_dict() for visit in view.visits],
    }


def cancel_fields(cancelled: Cancelled | None) -> dict[str, str | None]:
    """A task's `cancelledBy`, `cancelReason` and `cancelledAt` (None unless cancelled)."""
    if cancelled is None:
        return {"cancelledBy": None, "cancelReason": None, "cancelledAt": None}
    return {
        "cancelledBy": cancelled.by,
        "cancelReason": cancelled.reason,
        "cancelledAt": cancelled.at,
    }


@dataclass
class Board:
    """Every task seen, by id, in the order first seen, with the notices that tell it."""

    tasks: dict[str, Journey] = field(default_factory=dict)
    _notices: dict[str, dict[str, Notice]] = field(default_factory=dict)

    def apply(self, notice: Notice) -> Journey | None:
        """Add the notice to its task: the new journey, or None if nothing changed
        (a repeat, or a notice without a task id, which no journey can hold)."""
        task_id = notice.task_id
        if task_id is None:
            return None
        known = self._notices.setdefault(task_id, {})
        if notice.identity in known:
            return None
        known[notice.identity] = notice
        before = self.tasks.get(task_id)
        after = self.tasks[task_id] = journey(task_id, known.values())
        if before is not None and after.visits == before.visits:
            return None
        return after
