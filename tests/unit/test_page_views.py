"""The dashboard's drawing arithmetic: timeline bars, the routing path, the throughput chart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ulos_py.tracker.page_views import (
    MAX_TREE_DEPTH,
    age_text,
    routing_path,
    seconds_text,
    throughput_chart,
    timeline,
)

T0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


def at(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def node(key: str, success: Any = None, failure: Any = None) -> dict[str, Any]:
    tree: dict[str, Any] = {"exchange": "x", "routingKey": key}
    if success is not None:
        tree["successRoutingDecision"] = success
    if failure is not None:
        tree["failureRoutingDecision"] = failure
    return tree


def visit(key: str, outcome: str | None, to: str | None, **steps: float) -> dict[str, Any]:
    return {
        "stage": {"exchange": "x", "routingKey": key},
        "nodeId": "n1",
        "attempt": 1,
        "steps": {event: at(when) for event, when in steps.items()},
        "outcome": outcome,
        "crash": None,
        "forwardedTo": {"exchange": "x", "routingKey": to} if to else None,
    }


TREE = node("check", node("tests", node("passed"), node("failed")), node("failed"))


def test_timeline_puts_every_step_of_every_visit_on_one_axis() -> None:
    visits = [
        visit(
            "check", "pass", "tests", received=0, downloaded=1, execution_finished=5, forwarded=6
        ),
        visit("tests", "fail", "failed", received=6, execution_finished=10, forwarded=10),
    ]
    first, second = timeline(visits, T0 + timedelta(hours=1))
    assert [bar.step for bar in first.bars] == ["downloaded", "execution_finished", "forwarded"]
    assert first.bars[0].left == 0 and first.bars[0].width == 10  # 1 s of 10
    assert first.bars[1].left == 10 and first.bars[1].width == 40
    assert second.bars[0].left == 60
    assert second.bars[-1].width == 0.4  # a step of no time still shows
    assert first.steps[0] == ("received", at(0), None)
    assert first.steps[2][2] == 4


def test_a_running_visit_gets_a_bar_up_to_now() -> None:
    visits = [visit("check", None, None, received=0, downloaded=2)]
    [row] = timeline(visits, T0 + timedelta(seconds=4))
    assert row.bars[-1].running and row.bars[-1].left == 50 and row.bars[-1].width == 50


def test_the_path_follows_forwards_and_greys_the_rest() -> None:
    visits = [
        visit("check", "pass", "tests", received=0, forwarded=1),
        visit("tests", "fail", "failed", received=2, forwarded=3),
    ]
    root = routing_path(TREE, visits)
    assert root is not None and root.taken and root.status == "pass"
    tests, failed_early = root.children
    assert tests.taken and tests.status == "fail" and not failed_early.taken
    passed, failed = tests.children
    assert not passed.taken
    assert failed.taken and failed.status == "reached"  # delivered, nobody received it


def test_attempts_of_one_stage_are_one_node_of_the_path() -> None:
    crashed = {**visit("check", None, None, received=0), "crash": {"kind": "timeout", "detail": ""}}
    visits = [crashed, {**visit("check", None, None, received=5), "attempt": 2}]
    root = routing_path(TREE, visits)
    assert root is not None and root.status == "running"
    assert not any(child.taken for child in root.children)


def test_a_crash_ends_the_path() -> None:
    crashed = {**visit("check", None, None, received=0), "crash": {"kind": "archive", "detail": ""}}
    root = routing_path(TREE, [crashed])
    assert root is not None and root.status == "crashed"
    assert not any(child.taken for child in root.children)


def test_a_tree_deeper_than_drawn_is_cut_and_odd_trees_are_none() -> None:
    deep = node("leaf")
    for level in range(MAX_TREE_DEPTH + 10):
        deep = node(f"s{level}", deep)
    root = routing_path(deep, [])
    depth = 0
    while root is not None and root.children:
        root, depth = root.children[0], depth + 1
    assert depth == MAX_TREE_DEPTH and root is not None and root.cut
    assert routing_path(None, []) is None
    assert routing_path({"exchange": 1}, []) is None


def test_chart_scales_to_the_busiest_minute() -> None:
    chart = throughput_chart({"b": [0, 2, 4], "a": [1, 1, 1]}, 3, width=200, height=100)
    assert chart.top == 4
    assert [line.label for line in chart.lines] == ["a", "b"]
    assert chart.lines[1].points == "0.0,100.0 100.0,50.0 200.0,0.0"
    assert chart.lines[1].total == 6
    assert chart.ticks[-1] == (200.0, "now")


def test_durations_read_at_a_glance() -> None:
    assert seconds_text(0.035) == "35 ms"
    assert seconds_text(4.23) == "4.2 s"
    assert seconds_text(185) == "3 min 5 s"
    assert seconds_text(7800) == "2 h 10 min"
    assert seconds_text(None) == "\u2013"
    assert age_text(at(0), T0 + timedelta(seconds=12)) == "12.0 s ago"
    assert age_text(None, T0) == "never"
