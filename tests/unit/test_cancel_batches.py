"""The tracker's coalesced cancels, on an in-memory publisher: many requests, few messages,
each request answered only after its message was confirmed (the broker's side of the same
path is in tests/e2e/test_tracker_cancel.py)."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.support.fakes import FakePublisher
from ulos_py.cancellation import BATCH_LIMIT, parse_cancellations
from ulos_py.errors import PublishError
from ulos_py.tracker.cancel_batches import CancelBatches

EXCHANGE = "cancels"


def sent(publisher: FakePublisher) -> list[list[str]]:
    """The task ids of each message, as a node reads them."""
    return [
        [c.task_id for c in parse_cancellations(_wire(envelope.body))]
        for envelope in publisher.to(EXCHANGE, "")
    ]


def _wire(body: object) -> bytes:
    return json.dumps(body).encode()


async def test_requests_close_together_go_as_one_message_and_each_gets_its_own() -> None:
    publisher = FakePublisher(confirm_delay=0.01)
    batches = CancelBatches(publisher, EXCHANGE, window=0.05)
    answers = await asyncio.gather(
        *(batches.cancel(f"t{n}", "ta@lab", "resubmitted") for n in range(300))
    )
    assert sent(publisher) == [[f"t{n}" for n in range(300)]]
    assert [a.task_id for a in answers] == [f"t{n}" for n in range(300)]
    assert {(a.by, a.reason, a.at) for a in answers} == {
        (answers[0].by, "resubmitted", answers[0].at)
    }


async def test_a_lone_request_travels_as_a_single_cancel_after_the_window() -> None:
    publisher = FakePublisher()
    batches = CancelBatches(publisher, EXCHANGE, window=0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    made = await batches.cancel("alone", "ta@lab", "")
    assert 0.05 <= loop.time() - started < 1
    (envelope,) = publisher.to(EXCHANGE, "")
    assert envelope.body == made.body()  # the plain one-task form, as `ulos-py cancel` sends it


async def test_who_and_why_are_never_mixed_and_a_batch_is_bounded() -> None:
    publisher = FakePublisher()
    batches = CancelBatches(publisher, EXCHANGE, window=0.05)
    await asyncio.gather(
        *(batches.cancel(f"a{n}", "ta@lab", "one") for n in range(BATCH_LIMIT + 5)),
        batches.cancel("b", "ta@lab", "another reason"),
        batches.cancel("c", "someone else", "one"),
        batches.cancel("c", "someone else", "one"),  # twice in one batch: sent once
    )
    messages = sorted(sent(publisher), key=len)
    assert [len(m) for m in messages] == [1, 1, 5, BATCH_LIMIT]
    assert {m[0] for m in messages[:2]} == {"b", "c"}


async def test_a_refused_message_fails_every_request_it_carried_and_later_ones_go_again() -> None:
    publisher = FakePublisher(failing={(EXCHANGE, "")})
    batches = CancelBatches(publisher, EXCHANGE, window=0.02)
    results = await asyncio.gather(
        *(batches.cancel(f"t{n}", "ta@lab", "") for n in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, PublishError) for r in results)
    publisher.failing.clear()
    assert (await batches.cancel("t9", "ta@lab", "")).task_id == "t9"
    assert sent(publisher) == [["t9"]]


async def test_a_request_that_goes_away_leaves_the_others_send() -> None:
    publisher = FakePublisher()
    batches = CancelBatches(publisher, EXCHANGE, window=0.05)
    leaving = asyncio.create_task(batches.cancel("gone", "ta@lab", ""))
    staying = asyncio.create_task(batches.cancel("stays", "ta@lab", ""))
    await asyncio.sleep(0.01)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert (await staying).task_id == "stays"
    assert sent(publisher) == [["gone", "stays"]]
