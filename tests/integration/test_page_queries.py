"""The dashboard's own reads (page_queries), on a real SQLite file and a real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from tests.support.journeys import T0, Node, tree
from ulos_py.journey import Notice
from ulos_py.tracker import page_queries
from ulos_py.tracker.store import Incoming, Store


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(database_url, stuck_after=timedelta(minutes=5))
    try:
        await opened.add([Incoming(json.dumps(n.body).encode()) for n in _notices()])
        yield opened
    finally:
        await opened.close()


def _notices() -> list[Notice]:
    """t-done passes `a` and completes; t-run is running in `a`; t-wait went on from `a` to
    `b` (after a crash of its first attempt)."""
    running = Node("t-run", "n2", 100)
    waiting = Node("t-wait", "n1", 200)
    chain = tree("a", "b", "c")
    crashed = waiting.say("crashed", "a", chain, error={"kind": "timeout", "detail": ""})
    return [
        *Node("t-done").stage(("a",)),
        running.say("received", "a", tree("a")),
        crashed,
        *waiting.stage(("a", "b", "c")),  # forwarded to `b`, not received there yet
    ]


async def test_state_counts_count_stuck_apart_from_the_open_states(store: Store) -> None:
    soon = await page_queries.state_counts(store, T0 + timedelta(minutes=1))
    assert soon["passed"] == 1 and soon["running"] == 1 and soon["waiting"] == 1
    assert soon["stuck"] == 0 and soon["crashed"] == 0
    later = await page_queries.state_counts(store, T0 + timedelta(days=1))
    assert later["stuck"] == 2 and later["running"] == 0 and later["waiting"] == 0
    assert later["passed"] == 1


async def test_throughput_counts_ended_visits_per_stage_and_minute(store: Store) -> None:
    series = await page_queries.throughput(store, 60, T0 + timedelta(minutes=5, seconds=30))
    # t-done and t-wait ended at `a` in minute 12:00 (five minutes before the last slot);
    # t-wait's crashed first attempt ended there too; t-run has not ended.
    assert list(series) == ["a"]
    assert len(series["a"]) == 60
    assert series["a"][54] == 3 and sum(series["a"]) == 3
    assert await page_queries.throughput(store, 60, T0 + timedelta(hours=3)) == {}


async def test_node_activity_over_a_window_and_idle_nodes(store: Store) -> None:
    nodes = await page_queries.node_activity(store, now=T0 + timedelta(hours=1))
    assert [(n["nodeId"], n["visits"], n["crashes"]) for n in nodes] == [
        ("n1", 3, 1),
        ("n2", 1, 0),
    ]
    assert nodes[0]["lastSeen"].startswith("2025-03-01T12:00:00.")
    idle = await page_queries.node_activity(store, now=T0 + timedelta(hours=2))
    assert [(n["nodeId"], n["lastSeen"], n["visits"]) for n in idle] == [
        ("n1", None, 0),
        ("n2", None, 0),
    ]


async def test_the_routing_tree_is_the_one_the_task_started_with(store: Store) -> None:
    assert await page_queries.routing_tree(store, "t-wait") == tree("a", "b", "c")
    assert await page_queries.routing_tree(store, "t-run") == tree("a")
    assert await page_queries.routing_tree(store, "nope") is None
