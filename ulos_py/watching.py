"""Pure: each task's journey as a watcher sees it, folded from its log and crash notices.

A task's notices come from several nodes over two exchanges, so they need not arrive in the
order things happened: the next stage's node may report `received` before the previous
node's `forwarded` lands, and a crash arrives twice (crash notice and log). So the fold
files each notice under the visit of the stage it names, and a repeated notice changes
nothing (but `received`, which counts deliveries): the view follows what happened rather
than the order of arrival. No I/O here.

    notice → Notice (lenient reading) → Board.apply → TaskView (visits of stages) → rendered
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from ulos_py.notices import Event


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


@dataclass(frozen=True)
class Forwarded:
    """The broker confirmed the task on its next stage (None: the notice did not say where)."""

    target: StageKey | None


@dataclass(frozen=True)
class Completed:
    """No branch follows the outcome: the journey ended at this stage."""


@dataclass(frozen=True)
class Crashed:
    """The stage ended without an outcome; `kind` is SPEC §4 `error.kind`."""

    kind: str
    detail: str


End = Forwarded | Completed | Crashed


@dataclass(frozen=True)
class Notice:
    """One notice body, read leniently: a missing or odd field is None, never an error."""

    body: dict[str, Any]

    @property
    def task_id(self) -> str | None:
        value = self.body.get("taskId")
        return value if isinstance(value, str) and value else None

    @property
    def event(self) -> str:
        value = self.body.get("event")
        return value if isinstance(value, str) else "?"

    @property
    def stage(self) -> StageKey | None:
        return StageKey.of(self.body.get("stage"))

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
        return Crashed(
            kind if isinstance(kind, str) else "?",
            detail if isinstance(detail, str) else str(self.body.get("logMessage", "")),
        )

    @property
    def timestamp(self) -> datetime | None:
        value = self.body.get("timestamp")
        if not isinstance(value, str):
            return None
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            return None


def read_notice(raw: bytes) -> Notice | None:
    """The notice in a message body; None when the body is not a JSON object."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, nested beyond reason
        return None
    return Notice(body) if isinstance(body, dict) else None


@dataclass(frozen=True)
class StageVisit:
    """One pass of a task through a stage, as far as its notices tell."""

    stage: StageKey | None
    """None when the task had no routing tree (or the notice no stage)."""
    last_event: str
    attempts: int = 1
    """How many deliveries of this stage were received: above 1 after a redelivery."""
    outcome: str | None = None
    """The executor's `pass` or `fail`, once it decided."""
    end: End | None = None
    settled: str | None = None
    """`acked` or `rejected`, once the node settled the delivery."""
    requeued: bool = False
    """The rejected delivery went back to its queue."""

    @property
    def open(self) -> bool:
        """Still running: neither ended nor settled."""
        return self.end is None and self.settled is None

    def restarted(self) -> StageVisit:
        """The next delivery of the same stage visit (after a crash, reject or lost node)."""
        return StageVisit(self.stage, Event.RECEIVED.value, self.attempts + 1)


@dataclass(frozen=True)
class TaskView:
    """A task's journey: every stage visit in the order first seen."""

    task_id: str
    visits: tuple[StageVisit, ...] = ()

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
        """The visits behind the task: all but the latest, unless it forwarded or completed
        (a running, crashed or settled-without-end latest visit is the task's state)."""
        last = self.last
        if last is not None and isinstance(last.end, Forwarded | Completed):
            return self.visits
        return self.visits[:-1]

    @property
    def end(self) -> End | None:
        """How the latest visit ended; None while it runs (or if its end was not seen)."""
        last = self.last
        return last.end if last is not None else None


def fold(view: TaskView, notice: Notice) -> TaskView:
    """The view after one more notice of its task.

    A notice joins the latest visit of the stage it names. `received` there starts over:
    a new visit after a forward or completion (a routing tree may come back to a stage), or
    the next attempt of the same visit after a crash, a reject or a node that vanished.
    """
    stage, event = notice.stage, notice.event
    index = _latest_visit(view, stage)
    if index is None:
        return _put(view, len(view.visits), _changed(StageVisit(stage, event), notice))
    visit = view.visits[index]
    if event != Event.RECEIVED:
        return _put(view, index, _changed(visit, notice))
    if isinstance(visit.end, Forwarded | Completed) or visit.settled == Event.ACKED:
        return _put(view, len(view.visits), StageVisit(stage, event))
    return _put(view, index, visit.restarted())


def _latest_visit(view: TaskView, stage: StageKey | None) -> int | None:
    for index in range(len(view.visits) - 1, -1, -1):
        if view.visits[index].stage == stage:
            return index
    return None


def _put(view: TaskView, index: int, visit: StageVisit) -> TaskView:
    """The view with the visit at `index` replaced, or appended when `index` is the end."""
    visits = [*view.visits[:index], visit, *view.visits[index + 1 :]]
    return replace(view, visits=tuple(visits))


def _changed(visit: StageVisit, notice: Notice) -> StageVisit:
    """What one notice adds to its stage visit; a repeated notice adds nothing new."""
    event = notice.event
    visit = replace(visit, last_event=event)
    if event == Event.EXECUTION_FINISHED:
        return replace(visit, outcome=notice.outcome)
    if event == Event.FORWARDED:
        return replace(visit, end=Forwarded(StageKey.of(notice.body.get("target"))))
    if event == Event.COMPLETED:
        return replace(visit, end=Completed())
    if event == Event.CRASHED:
        return replace(visit, end=notice.crash)
    if event == Event.ACKED:
        return replace(visit, settled=event)
    if event == Event.REJECTED:
        return replace(visit, settled=event, requeued=notice.requeued)
    return visit


@dataclass
class Board:
    """Every task seen, by id, in the order first seen."""

    tasks: dict[str, TaskView] = field(default_factory=dict)

    def apply(self, notice: Notice) -> TaskView | None:
        """Fold the notice into its task's view: the new view, or None if nothing changed
        (a repeat, or a notice without a task id, which no view can hold)."""
        task_id = notice.task_id
        if task_id is None:
            return None
        before = self.tasks.get(task_id)
        after = fold(before or TaskView(task_id), notice)
        if after == before:
            return None
        self.tasks[task_id] = after
        return after
