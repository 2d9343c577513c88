"""The journey's states, steps and attempts (SPEC §10), and its independence of order."""

from __future__ import annotations

import random
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st

from tests.support.journeys import T0, Node, X, tree
from ulos_py.journey import Notice, State, journey, journey_dict


def test_a_completed_chain_passed_with_every_step_timed() -> None:
    node = Node()
    notices = [*node.stage(("a", "b")), *node.stage(("b",))]
    view = journey("t1", notices)
    assert view.state() == State.PASSED
    assert [v.stage.routing_key for v in view.visits if v.stage] == ["a", "b"]
    first = journey_dict(view, view.state())["visits"][0]
    assert first["attempt"] == 1
    assert first["nodeId"] == "n1"
    assert first["outcome"] == "pass"
    assert first["forwardedTo"] == {"exchange": X, "routingKey": "b"}
    assert list(first["steps"]) == [
        "received",
        "downloaded",
        "execution_started",
        "execution_finished",
        "uploaded",
        "forwarded",
        "acked",
    ]
    assert first["durations"]["downloaded"] == 0.001
    assert first["steps"]["received"] == "2025-03-01T12:00:00.001Z"


def test_a_failed_last_stage_is_failed() -> None:
    view = journey("t1", Node().stage(("a",), outcome="fail"))
    assert view.state() == State.FAILED


def test_forwarded_to_the_end_of_the_tree_is_delivered_until_a_node_takes_it() -> None:
    node = Node()
    notices = node.stage(("a", "lab.passed"))
    view = journey("t1", notices)
    assert view.state() == State.DELIVERED
    assert view.stage is not None
    assert view.stage.routing_key == "lab.passed"
    taken = journey("t1", [*notices, node.say("received", "lab.passed", tree("lab.passed"))])
    assert taken.state() == State.RUNNING


def test_forwarded_to_a_stage_with_decisions_is_waiting_and_then_stuck() -> None:
    view = journey("t1", Node().stage(("a", "b", "c")))
    assert view.state() == State.WAITING
    assert view.stage is not None
    assert view.stage.routing_key == "b"
    after = timedelta(minutes=5)
    assert view.updated_at is not None
    assert view.state_at(view.updated_at + timedelta(minutes=4), after) == State.WAITING
    assert view.state_at(view.updated_at + after, after) == State.STUCK


def test_running_past_its_timeout_and_the_margin_is_stuck() -> None:
    node = Node()
    view = journey("t1", [node.say("received", "a"), node.say("execution_started", "a")])
    margin = timedelta(seconds=30)
    started = T0 + timedelta(milliseconds=1)
    assert view.state_at(started + timedelta(seconds=39), margin) == State.RUNNING
    assert view.state_at(started + timedelta(seconds=40), margin) == State.STUCK


def test_a_crash_not_requeued_is_crashed_and_names_its_kind() -> None:
    node = Node()
    error = {"kind": "execution", "detail": "exit 3", "requeued": False}
    view = journey("t1", [node.say("received", "a"), node.say("crashed", "a", error=error)])
    assert view.state() == State.CRASHED
    assert journey_dict(view, view.state())["visits"][0]["crash"] == {
        "kind": "execution",
        "detail": "exit 3",
    }


def test_a_crash_that_says_requeued_leaves_the_task_waiting_for_attempt_two() -> None:
    node = Node()
    error = {"kind": "download", "detail": "gone", "requeued": True}
    first = [node.say("received", "a"), node.say("crashed", "a", error=error)]
    assert journey("t1", first).state() == State.WAITING
    view = journey("t1", [*first, *Node(node_id="n2", start=node.ms).stage(("a",))])
    assert [(v.attempt, v.node_id) for v in view.visits] == [(1, "n1"), (2, "n2")]
    assert view.state() == State.PASSED


def _a_busy_journey() -> list[Notice]:
    """Three stages over two nodes, a requeued crash, a redelivery after a lost node."""
    one, two = Node(node_id="n1"), Node(node_id="n2", start=100)
    error = {"kind": "download", "detail": "gone", "requeued": True}
    return [
        *one.stage(("a", "b", "c")),
        two.say("received", "b", tree("b", "c")),
        two.say("crashed", "b", tree("b", "c"), error=error),
        two.say("rejected", "b", tree("b", "c"), requeued=True),
        one.say("received", "b", tree("b", "c")),  # the broker hands it out again
        two.say("received", "b", tree("b", "c")),  # ... and again, after n1 vanished
        *Node(node_id="n3", start=300).stage(("b", "c")),
        *Node(node_id="n1", start=400).stage(("c",), outcome="fail"),
    ]


@given(st.randoms(use_true_random=False), st.integers(min_value=0, max_value=10))
def test_any_order_and_any_repeats_give_the_same_journey(rnd: random.Random, dups: int) -> None:
    notices = _a_busy_journey()
    expected = journey("t1", notices)
    shuffled = [*notices, *rnd.choices(notices, k=dups)]
    rnd.shuffle(shuffled)
    # A redelivered notice is a new object with an equal body.
    copies = [Notice(dict(notice.body)) for notice in shuffled]
    assert journey("t1", copies) == expected
    assert expected.state() == State.FAILED
    attempts = [(v.stage.routing_key, v.attempt) for v in expected.visits if v.stage]
    assert attempts == [("a", 1), ("b", 1), ("b", 2), ("b", 3), ("b", 4), ("c", 1)]


def test_notices_of_other_tasks_are_left_out() -> None:
    mine, theirs = Node("t1").stage(("a",)), Node("t2").stage(("a",), outcome="fail")
    assert journey("t1", [*theirs, *mine]) == journey("t1", mine)
