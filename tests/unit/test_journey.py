"""The pure journey: notices folded into each task's visits and state, and how `watch` shows it."""

from __future__ import annotations

import itertools
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import pytest

from ulos_py.adapters.rabbitmq_tooling import Observed
from ulos_py.cancellation import Cancellation
from ulos_py.cli.watch import Screen
from ulos_py.errors import ExecutionCrashed, MalformedTask
from ulos_py.journey import (
    Board,
    Cancelled,
    Completed,
    Crashed,
    Forwarded,
    Journey,
    Notice,
    StageKey,
    State,
    read_notice,
)
from ulos_py.models import RoutingNode
from ulos_py.notices import Event, NoticeContext, crash_notice, log_notice

EXCHANGE = "processing"
_clock = itertools.count()


def _tick() -> str:
    """A new millisecond for each notice built, as a node's clock would give."""
    return (datetime(2025, 3, 1, 12, tzinfo=UTC) + timedelta(milliseconds=next(_clock))).isoformat()


def notice(task_id: str | None, event: str, key: str | None = "testing-1", **fields: Any) -> dict:
    body: dict[str, Any] = {
        "taskOwnerId": "student-1",
        "filePath": "/lab/a.zip",
        "timeout": 10,
        "logMessage": f"{event} happened",
        "event": event,
        "nodeId": "node-1",
        "timestamp": _tick(),
        "stage": None if key is None else {"exchange": EXCHANGE, "routingKey": key},
        **fields,
    }
    if task_id is not None:
        body["taskId"] = task_id
    return body


def target(key: str) -> dict[str, str]:
    return {"exchange": EXCHANGE, "routingKey": key}


def stage_run(task_id: str, key: str, outcome: str = "pass") -> list[dict]:
    """A stage up to the executor's decision and the upload."""
    return [
        notice(task_id, "received", key),
        notice(task_id, "downloaded", key),
        notice(task_id, "execution_started", key),
        notice(task_id, "execution_finished", key, outcome=outcome),
        notice(task_id, "uploaded", key),
    ]


def forwarded(task_id: str, key: str, to: str) -> list[dict]:
    return [notice(task_id, "forwarded", key, target=target(to)), notice(task_id, "acked", key)]


def crashed(task_id: str, key: str | None, kind: str, detail: str, requeued: bool) -> list[dict]:
    """A crash as a node reports it: crash notice, the same as a log, then the reject."""
    error = {"kind": kind, "detail": detail}
    return [
        notice(task_id, "crashed", key, error=error),
        notice(task_id, "crashed", key, error=error),
        notice(task_id, "rejected", key, requeued=requeued),
    ]


def view_of(*bodies: dict, task_id: str = "t1") -> Journey:
    board = Board()
    for body in bodies:
        board.apply(Notice(body))
    return board.tasks[task_id]


def keys(view: Journey) -> list[str | None]:
    return [v.stage.routing_key if v.stage else None for v in view.passed]


# --- reading ---------------------------------------------------------------------------


def test_read_notice_takes_a_json_object() -> None:
    body = notice("t1", "received")
    read = read_notice(json.dumps(body).encode())
    assert read is not None
    assert read.body == body
    assert read.task_id == "t1"
    assert read.event == "received"
    assert read.stage == StageKey(EXCHANGE, "testing-1")
    assert read.timestamp == datetime(2025, 3, 1, 12, tzinfo=UTC)


@pytest.mark.parametrize(
    "raw",
    [b"", b"not json", b"\xff\xfe{", b"[1, 2]", b'"a string"', b"null", b"[" * 100_000],
    ids=["empty", "text", "not-utf8", "array", "string", "null", "nested-too-deep"],
)
def test_read_notice_refuses_what_is_not_a_json_object(raw: bytes) -> None:
    assert read_notice(raw) is None


@pytest.mark.parametrize(
    "raw",
    [
        '{"taskId": "t1", "n": 1}'.encode("utf-16"),
        b'\xef\xbb\xbf{"taskId": "t1"}',
        b'{"taskId": "t1", "big": 123456789012345678901234567890, "x": 1e400, "y": NaN}',
        b'{"taskId": "t1", "deep": ' + b"[" * 300 + b"]" * 300 + b"}",
        b'{"taskId": "t1", "s": "\\ud800 \\u00e9", "f": 0.1, "e": 1e-07, "k": 1, "k": 2}',
    ],
    ids=["utf-16", "byte-order-mark", "big-numbers", "nested", "escapes-and-repeated-key"],
)
def test_read_notice_reads_what_the_standard_library_reads(raw: bytes) -> None:
    """The fast parser or, where it refuses, the standard library: the same body either way
    (the identity, and so the stored key, is made from it)."""
    read = read_notice(raw)
    assert read is not None
    assert read.identity == Notice(json.loads(raw)).identity


def test_odd_fields_read_as_absent() -> None:
    odd = Notice(
        {
            "taskId": 7,
            "event": ["x"],
            "stage": {"exchange": 1, "routingKey": "k"},
            "outcome": 1,
            "timestamp": "yesterday",
            "error": "boom",
            "logMessage": "it broke",
        }
    )
    assert odd.task_id is None
    assert odd.event == "?"
    assert odd.stage is None
    assert odd.outcome is None
    assert odd.timestamp is None
    assert odd.crash == Crashed("?", "it broke")
    assert Notice({"taskId": ""}).task_id is None


def test_notices_built_by_a_node_are_read_as_meant() -> None:
    """The watcher reads what `ulos_py.notices` writes, not a copy of its format."""
    stage = RoutingNode.model_validate(
        {"exchange": EXCHANGE, "routingKey": "check", "successRoutingDecision": target("grade")}
    )
    ctx = NoticeContext("node-1", {"taskId": "t1", "filePath": "/a.zip"}, stage)
    hop = stage.success_routing_decision
    assert hop is not None
    bodies = [
        log_notice(ctx, Event.RECEIVED, "received"),
        log_notice(ctx, Event.EXECUTION_FINISHED, "finished", outcome="pass"),
        log_notice(ctx, Event.FORWARDED, "forwarded", target=hop.wire()),
    ]
    view = view_of(*bodies)
    assert view.end == Forwarded(StageKey(EXCHANGE, "grade"))
    assert [v.outcome for v in view.passed] == ["pass"]

    crash = crash_notice(ctx, ExecutionCrashed("executor crash failed"))
    assert Notice(crash).crash == Crashed("execution", "executor crash failed")
    malformed = crash_notice(
        NoticeContext("node-1", {}), MalformedTask("not JSON", b"{oops", errors=[])
    )
    assert Notice(malformed).task_id is None
    assert Notice(malformed).stage is None


# --- folding ---------------------------------------------------------------------------


def test_a_running_stage_is_the_current_one() -> None:
    view = view_of(notice("t1", "received"), notice("t1", "execution_started"))
    assert view.current is not None
    assert view.current.stage == StageKey(EXCHANGE, "testing-1")
    assert view.current.last_event == "execution_started"
    assert view.passed == ()
    assert view.end is None


def test_a_chain_lists_its_stages_in_order_with_outcomes() -> None:
    view = view_of(
        *stage_run("t1", "testing-1"),
        *forwarded("t1", "testing-1", "testing-2"),
        *stage_run("t1", "testing-2"),
        *forwarded("t1", "testing-2", "testing-3-fail"),
        *stage_run("t1", "testing-3-fail", outcome="fail"),
        *forwarded("t1", "testing-3-fail", "lab.failed"),
    )
    assert keys(view) == ["testing-1", "testing-2", "testing-3-fail"]
    assert [v.outcome for v in view.passed] == ["pass", "pass", "fail"]
    assert view.current is None
    assert view.end == Forwarded(StageKey(EXCHANGE, "lab.failed"))
    assert all(v.settled == "acked" for v in view.visits)


def test_the_next_stage_may_report_before_the_previous_one_says_forwarded() -> None:
    view = view_of(
        *stage_run("t1", "testing-1"),
        notice("t1", "received", "testing-2"),  # the next node was quicker
        *forwarded("t1", "testing-1", "testing-2"),
        notice("t1", "execution_started", "testing-2"),
    )
    assert keys(view) == ["testing-1"]
    assert view.visits[0].end == Forwarded(StageKey(EXCHANGE, "testing-2"))
    assert view.current is not None
    assert view.current.stage == StageKey(EXCHANGE, "testing-2")
    assert view.current.last_event == "execution_started"


def test_completed_ends_the_journey_at_its_stage() -> None:
    view = view_of(*stage_run("t1", "skip"), notice("t1", "completed", "skip"))
    assert view.end == Completed()
    assert keys(view) == ["skip"]
    assert view.current is None


def test_a_crash_names_its_kind_and_detail_and_is_not_a_passed_stage() -> None:
    view = view_of(
        *stage_run("t1", "skip"),
        *forwarded("t1", "skip", "crash"),
        notice("t1", "received", "crash"),
        *crashed("t1", "crash", "execution", "executor crash failed", requeued=False),
    )
    assert view.end == Crashed("execution", "executor crash failed")
    assert keys(view) == ["skip"]
    assert view.current is None
    assert view.last is not None
    assert view.last.requeued is False
    assert view.last.settled == "rejected"


def test_the_second_copy_of_a_crash_changes_nothing() -> None:
    board = Board()
    first, second, _ = crashed("t1", "crash", "timeout", "after 1 s", requeued=False)
    assert board.apply(Notice(notice("t1", "received", "crash"))) is not None
    assert board.apply(Notice(first)) is not None
    assert board.apply(Notice(second)) is None
    assert board.apply(Notice(notice("t1", "acked", "crash"))) is not None
    assert board.apply(Notice(notice("t1", "acked", "crash"))) is None


def test_a_requeued_crash_runs_the_same_stage_again() -> None:
    first = [
        notice("t1", "received", "flaky"),
        *crashed("t1", "flaky", "download", "connection dropped", requeued=True),
    ]
    view = view_of(*first)
    assert view.last is not None
    assert view.last.requeued is True
    assert view.end == Crashed("download", "connection dropped")
    assert view.state() == State.WAITING
    again = view_of(*first, notice("t1", "received", "flaky"))
    assert [v.attempt for v in again.visits] == [1, 2]
    assert again.current is not None
    assert again.end is None
    assert again.current.requeued is False
    assert again.state() == State.RUNNING


def test_a_task_returned_to_the_queue_on_shutdown_is_neither_running_nor_ended() -> None:
    first = [
        notice("t1", "received", "pass"),
        notice("t1", "execution_started", "pass"),
        notice("t1", "rejected", "pass", requeued=True),
    ]
    view = view_of(*first)
    assert view.current is None
    assert view.end is None
    assert view.last is not None
    assert (view.last.settled, view.last.requeued) == ("rejected", True)
    assert view.state() == State.WAITING
    again = view_of(*first, notice("t1", "received", "pass"))
    assert again.current is not None
    assert again.current.attempt == 2


def test_a_redelivery_of_a_running_stage_counts_an_attempt() -> None:
    """The first node vanished mid-task; the broker gave the task to another."""
    view = view_of(
        notice("t1", "received"),
        notice("t1", "execution_started"),
        notice("t1", "received", nodeId="node-2"),
    )
    assert [(v.attempt, v.node_id) for v in view.visits] == [(1, "node-1"), (2, "node-2")]
    assert view.current is not None
    assert view.current.last_event == "received"


def test_a_tree_coming_back_to_a_stage_visits_it_anew() -> None:
    view = view_of(
        *stage_run("t1", "check", outcome="fail"),
        *forwarded("t1", "check", "fix"),
        *stage_run("t1", "fix"),
        *forwarded("t1", "fix", "check"),
        *stage_run("t1", "check"),
        notice("t1", "completed", "check"),
    )
    assert keys(view) == ["check", "fix", "check"]
    assert [v.outcome for v in view.passed] == ["fail", "pass", "pass"]
    assert all(v.attempt == 1 for v in view.visits)


def test_a_task_without_routing_tree_crashes_at_no_stage() -> None:
    view = view_of(
        notice("t1", "received", key=None),
        *crashed("t1", None, "no_routing", "the task has no routing tree", requeued=False),
    )
    assert view.last is not None
    assert view.last.stage is None
    assert view.end == Crashed("no_routing", "the task has no routing tree")


def test_a_watcher_that_joins_late_starts_from_what_it_sees() -> None:
    view = view_of(
        *forwarded("t1", "testing-4", "testing-5"), notice("t1", "received", "testing-5")
    )
    assert keys(view) == ["testing-4"]
    assert view.passed[0].outcome is None
    assert view.current is not None


def test_unknown_events_only_move_the_last_event() -> None:
    view = view_of(notice("t1", "received"), notice("t1", "progress", percent=50))
    assert view.current is not None
    assert view.current.last_event == "progress"
    assert view.current.outcome is None


def test_forwarded_without_a_readable_target_still_ends_the_stage() -> None:
    view = view_of(notice("t1", "received"), notice("t1", "forwarded", target="somewhere"))
    assert view.end == Forwarded(None)


def test_the_board_keeps_tasks_apart_in_the_order_first_seen() -> None:
    board = Board()
    for body in (
        notice("b", "received", "skip"),
        notice("a", "received", "crash"),
        notice("b", "completed", "skip"),
    ):
        board.apply(Notice(body))
    assert list(board.tasks) == ["b", "a"]
    assert board.tasks["b"].end == Completed()
    assert board.tasks["a"].current is not None


def test_a_notice_without_task_id_joins_no_view() -> None:
    board = Board()
    assert board.apply(Notice(notice(None, "crashed", None, error={"kind": "malformed"}))) is None
    assert board.tasks == {}


# --- showing (the CLI's Screen, without a broker) --------------------------------------


def observed(body: dict | bytes, exchange: str = "logs-x", key: str = "logs") -> Observed:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return Observed(exchange, key, raw)


LINE = re.compile(r"^\d\d:\d\d:\d\d (?P<task>\S+) +(?P<stage>\S+) +(?P<text>.*)$")


def test_lines_show_stages_passed_and_the_current_one(capsys: pytest.CaptureFixture[str]) -> None:
    screen = Screen(json_lines=False, task_ids=frozenset())
    for body in [
        *stage_run("t1", "testing-1"),
        *forwarded("t1", "testing-1", "testing-2"),
        notice("t1", "received", "testing-2"),
        notice("t1", "execution_started", "testing-2"),
    ]:
        screen.show(observed(body))
    lines = capsys.readouterr().out.splitlines()
    parsed = [LINE.match(line) for line in lines]
    assert all(parsed), lines
    texts = [m["text"] for m in parsed if m]
    assert texts[0] == "now testing-1 (received)"
    assert "now testing-1 ✓ (execution_finished)" in texts
    assert "passed: testing-1 ✓ | forwarded to testing-2" in texts
    assert texts[-1] == "passed: testing-1 ✓ | now testing-2 (execution_started)"
    assert len(texts) == len(set(texts)), "a line that shows nothing new is left out"


def test_a_crash_line_names_kind_and_detail(capsys: pytest.CaptureFixture[str]) -> None:
    screen = Screen(json_lines=False, task_ids=frozenset())
    for body in [
        *stage_run("t1", "skip"),
        *forwarded("t1", "skip", "crash"),
        notice("t1", "received", "crash"),
        *crashed("t1", "crash", "execution", "executor crash failed", requeued=True),
    ]:
        screen.show(observed(body))
    last = capsys.readouterr().out.splitlines()[-1]
    assert last.endswith(
        "passed: skip ✓ | crashed at crash: execution: executor crash failed (back in the queue)"
    )


def test_json_lines_are_compact_and_alone_on_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    screen = Screen(json_lines=True, task_ids=frozenset())
    bodies = [*stage_run("t1", "skip"), notice("t1", "completed", "skip")]
    for body in bodies:
        screen.show(observed(body))
    screen.show(observed(b"\x00 not json"))
    screen.finish()
    out, err = capsys.readouterr()
    assert [json.loads(line) for line in out.splitlines()] == bodies
    assert all(", " not in line for line in out.splitlines())
    assert "not a JSON notice on 'logs-x' / 'logs'" in err
    assert "1 task seen: 1 completed, 1 notice(s) not JSON" in err


def test_task_filter_applies_to_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    for json_lines in (True, False):
        screen = Screen(json_lines=json_lines, task_ids=frozenset({"a", "c"}))
        for task_id in ("a", "b", "c", None):
            screen.show(observed(notice(task_id, "received", "skip")))
        out = capsys.readouterr().out
        assert "received" in out or "now skip" in out
        assert '"b"' not in out
        assert " b " not in out
        assert "(no task id)" not in out
        assert list(screen.board.tasks) == ["a", "c"]


def test_unreadable_and_anonymous_notices_are_shown_as_such(
    capsys: pytest.CaptureFixture[str],
) -> None:
    screen = Screen(json_lines=False, task_ids=frozenset())
    screen.show(observed(b"{broken", exchange="crash-x", key="crash"))
    malformed = notice(None, "crashed", None, error={"kind": "malformed", "detail": "not JSON"})
    screen.show(observed(malformed, exchange="crash-x", key="crash"))
    screen.finish()
    out = capsys.readouterr().out
    assert "(not a JSON notice on 'crash-x' / 'crash') '{broken'" in out
    assert "(no task id)  (no stage)  crashed: crashed happened" in out
    assert "0 tasks seen: 1 notice(s) not JSON, 1 notice(s) without a task id" in out


def test_the_summary_has_a_row_per_task(capsys: pytest.CaptureFixture[str]) -> None:
    screen = Screen(json_lines=False, task_ids=frozenset())
    for body in [
        *stage_run("done", "skip"),
        notice("done", "completed", "skip"),
        *stage_run("going", "testing-1"),
        *forwarded("going", "testing-1", "testing-2"),
        notice("going", "received", "testing-2"),
        notice("broke", "received", "crash"),
        *crashed("broke", "crash", "execution", "boom", requeued=False),
    ]:
        screen.show(observed(body))
    capsys.readouterr()
    screen.finish()
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "3 tasks seen: 1 completed, 1 running, 1 crashed"
    assert out[2].split() == ["TASK", "PASSED", "STATE"]
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in out[3:]}
    assert rows == {
        "done": "skip ✓ completed",
        "going": "testing-1 ✓ now testing-2 (received)",
        "broke": "- crashed at crash: execution: boom",
    }


def test_a_node_s_cancel_crash_notice_folds_to_cancelled_with_who_and_why() -> None:
    """The notice format the node writes (notices.crash_notice) is the one the fold reads."""
    ctx = NoticeContext("node-1", {"taskId": "t1", "filePath": "/a.zip"}, None)
    made = Cancellation.now("t1", "ta@lab", "withdrawn")
    view = view_of(log_notice(ctx, Event.RECEIVED, "received"), crash_notice(ctx, made.crash()))
    assert view.state() == State.CANCELLED
    assert view.cancelled == Cancelled("ta@lab", "withdrawn", made.at)


def test_a_cancelled_task_s_line_says_cancelled_and_by_whom(
    capsys: pytest.CaptureFixture[str],
) -> None:
    screen = Screen(json_lines=False, task_ids=frozenset())
    error = {"kind": "cancelled", "detail": "cancelled by ta: late", "cancelledBy": "ta"}
    for body in [
        notice("t1", "received", "grade"),
        notice("t1", "crashed", "grade", error=error),
        notice("t1", "acked", "grade"),
    ]:
        screen.show(observed(body))
    screen.finish()
    out = click.unstyle(capsys.readouterr().out)
    assert "cancelled at grade: cancelled by ta: late" in out
    assert "1 task seen: 1 cancelled" in out
