"""Pure: what the dashboard draws, computed from the tracker's answers (no I/O, no HTML).

The templates only place what these functions measure: the journey's timeline (each step's
duration as a bar on one time axis), the routing tree with the path the task took, and the
throughput chart's lines. Keeping the arithmetic here keeps it tested without a browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

STEP_NAMES = {
    "downloaded": "download",
    "leased": "lease",
    "execution_started": "prepare",
    "execution_finished": "execution",
    "uploaded": "upload",
    "forwarded": "forward",
    "completed": "complete",
    "crashed": "crash",
    "rejected": "reject",
    "acked": "ack",
}
"""What the time up to each step was spent on (the step names the end of the interval)."""

MAX_TREE_DEPTH = 24
"""Deeper routing trees are cut in the drawing (a tree is data from a task, not trusted)."""

PALETTE = ("#2563eb", "#16a34a", "#dc2626", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777")


def parse_time(value: object) -> datetime | None:
    """An RFC 3339 time from the tracker, or None when absent or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def seconds_text(seconds: float | None) -> str:
    """A duration a person reads at a glance: 35 ms, 4.2 s, 3 min 5 s, 2 h 10 min."""
    if seconds is None:
        return "\u2013"  # an en dash: no value
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60)} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60)} min"


def age_text(when: object, now: datetime) -> str:
    """How long ago an RFC 3339 time was, e.g. `12 s ago`."""
    moment = parse_time(when)
    if moment is None:
        return "never"
    return f"{seconds_text(max((now - moment).total_seconds(), 0))} ago"


@dataclass(frozen=True)
class Bar:
    """One step of a visit on the journey's time axis, in percent of the axis."""

    step: str
    label: str
    left: float
    width: float
    seconds: float
    running: bool = False


@dataclass(frozen=True)
class TimelineRow:
    visit: dict[str, Any]
    bars: tuple[Bar, ...]
    steps: tuple[tuple[str, str, float | None], ...]
    """(event, RFC 3339 time, seconds since the step before) in the order they happened."""


def _visit_steps(visit: dict[str, Any]) -> list[tuple[str, datetime, str]]:
    steps = visit.get("steps")
    found = []
    for event, raw in (steps if isinstance(steps, dict) else {}).items():
        when = parse_time(raw)
        if when is not None:
            found.append((str(event), when, str(raw)))
    return sorted(found, key=lambda step: step[1])


def timeline(visits: list[dict[str, Any]], now: datetime) -> list[TimelineRow]:
    """Each visit's steps as bars on one axis from the first step to the last (or now, while
    the last visit runs), so a slow step stands out wherever it happened."""
    stepped = [_visit_steps(visit) for visit in visits]
    times = [when for steps in stepped for _, when, _ in steps]
    if not times:
        return [TimelineRow(visit, (), ()) for visit in visits]
    start = min(times)
    running = bool(visits) and _is_open(visits[-1])
    end = max([*times, now] if running else times)
    span = max((end - start).total_seconds(), 1e-3)
    rows = []
    for index, (visit, steps) in enumerate(zip(visits, stepped, strict=True)):
        bars, listed = [], []
        for position, (event, when, raw) in enumerate(steps):
            seconds = (when - steps[position - 1][1]).total_seconds() if position else None
            listed.append((event, raw, seconds))
            if seconds is not None:
                bars.append(_bar(event, steps[position - 1][1], seconds, start, span))
        if running and index == len(visits) - 1 and steps:
            seconds = (now - steps[-1][1]).total_seconds()
            bars.append(_bar("running", steps[-1][1], max(seconds, 0), start, span, True))
        rows.append(TimelineRow(visit, tuple(bars), tuple(listed)))
    return rows


def _bar(
    event: str, begun: datetime, seconds: float, start: datetime, span: float, running: bool = False
) -> Bar:
    left = (begun - start).total_seconds() / span * 100
    width = max(seconds / span * 100, 0.4)  # a millisecond step still shows
    label = STEP_NAMES.get(event, event)
    return Bar(event, label, round(left, 3), round(width, 3), seconds, running)


def _is_open(visit: dict[str, Any]) -> bool:
    return not (
        visit.get("settled")
        or visit.get("crash")
        or visit.get("forwardedTo")
        or "completed" in (visit.get("steps") or {})
    )


@dataclass
class TreeNode:
    """A routing node as drawn: taken (on the task's path) or not, and what happened there."""

    exchange: str
    routing_key: str
    branch: str | None
    """`success` or `failure` under its parent; None for the root (the first stage)."""
    taken: bool = False
    status: str | None = None
    """`pass`, `fail`, `crashed`, `running` or `reached` (delivered, not received) on the path."""
    children: list[TreeNode] = field(default_factory=list)
    cut: bool = False
    """Deeper branches exist but are not drawn."""


def _stage_of(value: object) -> tuple[str, str] | None:
    if not isinstance(value, dict):
        return None
    exchange, key = value.get("exchange"), value.get("routingKey")
    if isinstance(exchange, str) and isinstance(key, str):
        return exchange, key
    return None


def _tree(value: dict[str, Any], branch: str | None, depth: int) -> TreeNode | None:
    stage = _stage_of(value)
    if stage is None:
        return None
    node = TreeNode(stage[0], stage[1], branch)
    for name, key in (("success", "successRoutingDecision"), ("failure", "failureRoutingDecision")):
        child = value.get(key)
        if not isinstance(child, dict):
            continue
        if depth >= MAX_TREE_DEPTH:
            node.cut = True
            continue
        drawn = _tree(child, name, depth + 1)
        if drawn is not None:
            node.children.append(drawn)
    return node


def routing_path(tree: object, visits: list[dict[str, Any]]) -> TreeNode | None:
    """The routing tree with the path the visits took through it marked.

    From the root, each run of visits to the node's stage (attempts of one visit) ends in an
    outcome and maybe a forward; the branch followed is the one the forward went to (or the
    outcome's, when the forward's target is unknown). A forward to a node no visit reached
    marks it `reached`: delivered there, at the end of the path.
    """
    root = _tree(tree, None, 0) if isinstance(tree, dict) else None
    node, index = root, 0
    while node is not None and index < len(visits):
        here = (node.exchange, node.routing_key)
        if _stage_of(visits[index].get("stage")) != here:
            break
        while index + 1 < len(visits) and _stage_of(visits[index + 1].get("stage")) == here:
            if not _is_open(visits[index]) and not visits[index].get("crash"):
                break  # it went on and the tree came back to this stage: a new node
            index += 1
        visit = visits[index]
        node.taken, node.status = True, _visit_status(visit)
        node = _next_node(node, visit)
        index += 1
        if node is not None and index >= len(visits):
            node.taken, node.status = True, "reached"
    return root


def _visit_status(visit: dict[str, Any]) -> str:
    if visit.get("crash"):
        return "crashed"
    outcome = visit.get("outcome")
    if outcome in ("pass", "fail"):
        return str(outcome)
    return "running" if _is_open(visit) else "ended"


def _next_node(node: TreeNode, visit: dict[str, Any]) -> TreeNode | None:
    target = _stage_of(visit.get("forwardedTo"))
    if target is None:
        return None
    wanted = {"pass": "success", "fail": "failure"}.get(str(visit.get("outcome")))
    matches = [c for c in node.children if (c.exchange, c.routing_key) == target]
    preferred = [c for c in matches if c.branch == wanted]
    return next(iter(preferred or matches), None)


@dataclass(frozen=True)
class Line:
    label: str
    color: str
    points: str
    total: int


@dataclass(frozen=True)
class Chart:
    """A line chart of finished visits per minute, one line per stage."""

    width: int
    height: int
    top: int
    lines: tuple[Line, ...]
    ticks: tuple[tuple[float, str], ...]


def throughput_chart(
    series: dict[str, list[int]], minutes: int, width: int = 640, height: int = 180
) -> Chart:
    """Polylines for per-minute counts (oldest minute first), scaled to the busiest minute."""
    top = max([1, *(count for counts in series.values() for count in counts)])
    step = width / max(minutes - 1, 1)
    lines = []
    for number, (label, counts) in enumerate(sorted(series.items())):
        points = " ".join(
            f"{i * step:.1f},{height - count / top * height:.1f}" for i, count in enumerate(counts)
        )
        lines.append(Line(label, PALETTE[number % len(PALETTE)], points, sum(counts)))
    ticks = tuple(
        (round(i * step, 1), f"-{minutes - 1 - i} min" if i < minutes - 1 else "now")
        for i in sorted(range(minutes - 1, -1, -15))
    )
    return Chart(width, height, top, tuple(lines), ticks)
