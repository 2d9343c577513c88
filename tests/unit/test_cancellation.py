"""Cancellations: the bounded memory, the scope that stops a running stage, and the lifecycle
rows of SPEC §8 on in-memory doubles (the broker's side is in tests/integration)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.support.fakes import FakeDelivery, SleepingExecutor
from tests.support.lifecycle_node import FILE, TASK_ID, encode, make_node, only, task
from ulos_py.cancellation import (
    CancelBoard,
    Cancellation,
    CancellationMemory,
    batch_body,
    parse_cancellation,
    parse_cancellations,
    rfc3339,
)
from ulos_py.errors import TaskCancelled
from ulos_py.lifecycle import process
from ulos_py.settings import retention_seconds
from ulos_py.topology import QueueSpec, Topology

START = datetime(2026, 12, 2, 4, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


def made(
    task_id: str, at: datetime = START, by: str = "ta@lab", reason: str = "why"
) -> Cancellation:
    return Cancellation(task_id, by, reason, rfc3339(at))


# --- the wire format ------------------------------------------------------------------------


def test_a_cancellation_travels_as_json_and_back() -> None:
    sent = Cancellation.now("sub-1", "alice@host", "resubmitted")
    assert parse_cancellation(json.dumps(sent.body()).encode()) == sent


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"cancelledBy": "x", "cancelledAt": "2026-12-02T04:00:00Z"}',
        b'{"taskId": "", "cancelledBy": "x", "cancelledAt": "2026-12-02T04:00:00Z"}',
        b'{"taskId": "a", "cancelledBy": 3, "cancelledAt": "2026-12-02T04:00:00Z"}',
        b'{"taskId": "a", "cancelledBy": "x", "cancelledAt": "yesterday"}',
    ],
)
def test_anything_else_is_not_a_cancellation(body: bytes) -> None:
    assert parse_cancellation(body) is None


def test_who_and_why_are_bounded() -> None:
    cancellation = Cancellation.now("a", "x" * 10_000, "y" * 10_000)
    assert len(cancellation.by) == len(cancellation.reason) == 500


def test_the_crash_names_who_and_why() -> None:
    crash = made("a", by="alice@host", reason="resubmitted").crash()
    assert isinstance(crash, TaskCancelled)
    assert crash.kind.value == "cancelled"
    assert crash.detail == "cancelled by alice@host: resubmitted"
    assert (crash.by, crash.reason) == ("alice@host", "resubmitted")
    assert made("a", reason="").crash().detail == "cancelled by ta@lab (no reason given)"


# --- the memory --------------------------------------------------------------------------------


def test_memory_remembers_until_its_retention_runs_out() -> None:
    clock = Clock()
    memory = CancellationMemory(10, retention=60, clock=clock)
    assert memory.remember(made("a"))
    clock.now = START + timedelta(seconds=59)
    assert memory.lookup("a") == made("a")
    clock.now = START + timedelta(seconds=60)
    assert memory.lookup("a") is None
    assert len(memory) == 0


def test_an_expired_cancellation_from_the_stream_is_not_remembered() -> None:
    memory = CancellationMemory(10, retention=60, clock=Clock())
    assert not memory.remember(made("old", at=START - timedelta(seconds=61)))
    assert memory.lookup("old") is None


def test_memory_keeps_at_most_its_limit_forgetting_the_oldest() -> None:
    memory = CancellationMemory(3, retention=3600, clock=Clock())
    for name in "abcde":
        memory.remember(made(name))
    assert len(memory) == 3
    assert [memory.lookup(name) is not None for name in "abcde"] == [False, False, True, True, True]


def test_expired_entries_leave_as_new_ones_arrive() -> None:
    clock = Clock()
    memory = CancellationMemory(100, retention=10, clock=clock)
    for i in range(50):
        memory.remember(made(f"early-{i}"))
    clock.now = START + timedelta(seconds=11)
    memory.remember(made("late", at=clock.now))
    assert len(memory) == 1


def test_the_same_task_cancelled_twice_keeps_the_first() -> None:
    memory = CancellationMemory(10, retention=3600, clock=Clock())
    first, second = made("a", by="first"), made("a", by="second")
    assert memory.remember(first) and memory.remember(second)
    assert memory.lookup("a") == first
    assert len(memory) == 1


def test_a_memory_holds_at_least_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        CancellationMemory(0)


# --- the scope ----------------------------------------------------------------------------------


async def test_a_scope_refuses_a_task_already_cancelled() -> None:
    board = CancelBoard()
    board.cancel(Cancellation.now("a", "me"))
    with pytest.raises(TaskCancelled):
        async with board.scope("a"):
            raise AssertionError("entered")


async def test_a_board_behind_holds_a_task_until_it_caught_up_with_the_missed_cancels() -> None:
    board = CancelBoard()
    board.behind()  # the connection was lost: cancels may have been missed
    entering = asyncio.create_task(board.scope("a").__aenter__())
    await asyncio.sleep(0.05)
    assert not entering.done()
    board.cancel(Cancellation.now("a", "me"))  # read from the stream after the reconnect
    board.caught_up()
    with pytest.raises(TaskCancelled):
        await entering


async def test_a_board_behind_lets_a_task_go_after_its_wait() -> None:
    board = CancelBoard(behind_wait=0.05)
    board.behind()
    async with board.scope("a"):
        pass


async def test_a_cancel_stops_the_running_block_as_task_cancelled() -> None:
    board = CancelBoard()
    entered = asyncio.Event()

    async def stage() -> None:
        async with board.scope("a"):
            entered.set()
            await asyncio.sleep(60)

    runner = asyncio.create_task(stage())
    await entered.wait()
    board.cancel(Cancellation.now("a", "me", "stop"))
    with pytest.raises(TaskCancelled, match="cancelled by me: stop"):
        await runner
    assert runner.cancelling() == 0  # nothing left for the rest of the task to trip on
    assert board.running == 0


async def test_a_shutdown_stays_a_cancelled_error_even_after_a_cancel() -> None:
    board = CancelBoard()
    entered = asyncio.Event()

    async def stage() -> None:
        async with board.scope("a"):
            entered.set()
            await asyncio.sleep(60)

    runner = asyncio.create_task(stage())
    await entered.wait()
    runner.cancel()  # the node shuts down
    board.cancel(Cancellation.now("a", "me"))
    with pytest.raises(asyncio.CancelledError):
        await runner


async def test_a_closed_scope_is_not_stopped_and_other_tasks_never_are() -> None:
    board = CancelBoard()
    closed, other = asyncio.Event(), asyncio.Event()

    async def stage(task_id: str, ready: asyncio.Event, close: bool) -> str:
        async with board.scope(task_id) as scope:
            if close:
                scope.close()
            ready.set()
            await asyncio.sleep(0.05)
        return task_id

    first = asyncio.create_task(stage("a", closed, close=True))
    second = asyncio.create_task(stage("b", other, close=False))
    await closed.wait()
    await other.wait()
    board.cancel(Cancellation.now("a", "me"))
    assert await first == "a"
    assert await second == "b"


# --- the lifecycle (SPEC §8) ----------------------------------------------------------------


@pytest.mark.parametrize("requeue_on_reject", [False, True])
async def test_a_known_cancelled_task_is_dropped_before_download_and_acked(
    tmp_path: Path, requeue_on_reject: bool
) -> None:
    node = make_node(tmp_path, requeue_on_reject=requeue_on_reject)
    deps = node.deps
    deps.cancellations.cancel(Cancellation.now(TASK_ID, "instructor", "withdrawn"))
    delivery = FakeDelivery(encode(task()))
    await process(delivery, deps)
    assert delivery.acked and not delivery.rejected
    assert node.storage.downloads == []
    assert node.events() == ["received", "crashed", "acked"]
    [crash] = node.crashes()
    assert crash["error"] == {
        "kind": "cancelled",
        "detail": "cancelled by instructor: withdrawn",
        "cancelledBy": "instructor",
        "reason": "withdrawn",
        "cancelledAt": crash["error"]["cancelledAt"],
    }
    assert node.forwards() == []
    await node.assert_work_dir_empty()


async def test_a_running_task_is_stopped_acked_and_nothing_uploaded(tmp_path: Path) -> None:
    sleeper = SleepingExecutor()
    node = make_node(tmp_path, only(sleeper), requeue_on_reject=True)
    deps = node.deps
    delivery = FakeDelivery(encode(task()))
    running = asyncio.create_task(process(delivery, deps))
    await asyncio.wait_for(sleeper.started.wait(), 5)
    deps.cancellations.cancel(Cancellation.now(TASK_ID, "ta", "runaway"))
    await asyncio.wait_for(running, 2)
    assert sleeper.cancelled
    assert delivery.acked and not delivery.rejected
    assert node.storage.uploads == [] and node.forwards() == []
    assert node.events()[-2:] == ["crashed", "acked"]
    assert node.crashes()[0]["error"]["cancelledBy"] == "ta"
    assert node.storage.downloads == [FILE]
    await node.cleaner.drain()
    await node.assert_work_dir_empty()


async def test_a_cancel_of_another_task_changes_nothing(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    deps = node.deps
    deps.cancellations.cancel(Cancellation.now("someone-else", "ta"))
    delivery = FakeDelivery(encode(task()))
    await process(delivery, deps)
    assert delivery.acked
    assert "crashed" not in [n["event"] for n in node.logs()]
    assert node.storage.uploads == [FILE]


# --- settings and topology -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1D", 86400.0), ("12h", 43200.0), ("30m", 1800.0), ("90s", 90.0), ("45", 45.0)],
)
def test_retention_reads_rabbitmq_units(text: str, seconds: float) -> None:
    assert retention_seconds(text) == seconds


def test_retention_refuses_other_text() -> None:
    with pytest.raises(ValueError, match="a duration like"):
        retention_seconds("a week")


def test_a_stream_without_max_age_gets_the_retention() -> None:
    spec = Topology(queue=(QueueSpec(name="c", type="stream"), QueueSpec(name="q")))
    [stream, plain] = spec.with_stream_retention(3600).queue
    assert stream.arguments() == {"x-queue-type": "stream", "x-max-age": "3600s"}
    assert plain.arguments() == {}


def test_a_stream_takes_no_priority() -> None:
    with pytest.raises(ValueError, match="max_priority"):
        QueueSpec(name="c", type="stream", max_priority=3)


async def test_a_cancelled_task_is_cancelled_even_where_no_executor_serves_it(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path)
    deps = node.deps
    deps.cancellations.cancel(Cancellation.now(TASK_ID, "ta"))
    delivery = FakeDelivery(encode(task("no-such-stage")))
    await process(delivery, deps)
    assert delivery.acked
    assert node.crashes()[0]["error"]["kind"] == "cancelled"


def test_a_batch_carries_many_cancellations_made_together() -> None:
    made = [
        Cancellation("a", "ta", "why", rfc3339(START)),
        Cancellation("b", "ta", "why", rfc3339(START)),
    ]
    body = json.dumps(batch_body(made)).encode()
    assert parse_cancellations(body) == made
    assert parse_cancellation(body) is None  # not one cancellation


def test_a_batch_is_bounded_and_made_together() -> None:
    with pytest.raises(ValueError, match="made together"):
        batch_body([made("a"), made("b", by="someone else")])
    too_many = json.dumps(
        {"taskIds": ["x"] * 1001, "cancelledBy": "a", "cancelledAt": rfc3339(START)}
    ).encode()
    assert parse_cancellations(too_many) == []
    assert (
        parse_cancellations(
            b'{"taskIds": ["ok", 3], "cancelledBy": "a", "cancelledAt": "2026-12-02T04:00:00Z"}'
        )
        == []
    )
