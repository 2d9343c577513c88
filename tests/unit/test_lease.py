"""Long tasks and the broker's consumer timeout: the lifecycle leases a task that may run
longer than the broker lets a delivery go unacknowledged (`Delivery.lease`), on doubles.

What a lease is on RabbitMQ is tested in tests/integration/test_consumer_timeout.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.support.fakes import FakeDelivery, SleepingExecutor
from tests.support.lifecycle_node import (
    FILE,
    SUCCESS_ROUTE,
    Node,
    encode,
    make_node,
    only,
    task,
)
from ulos_py.errors import ConfigError
from ulos_py.lifecycle import AckTimeout, process
from ulos_py.topology import describe, load_topology

BROKER = AckTimeout(seconds=60, margin=15)
"""A broker that closes a channel holding a delivery unacknowledged for a minute."""


async def run(
    node: Node, body: bytes, ack_timeout: AckTimeout, lease: bool | None = True
) -> FakeDelivery:
    received = FakeDelivery(body, journal=node.journal, lease=lease)
    await process(received, dataclasses.replace(node.deps, ack_timeout=ack_timeout))
    await node.cleaner.drain()
    return received


@pytest.mark.parametrize(
    ("ack_timeout", "task_timeout", "lease"),
    [
        (AckTimeout(0, 300), 86_400, None),  # the broker has no timeout
        (AckTimeout(1800, 300), 1499, None),  # ends within the timeout, margin included
        (AckTimeout(1800, 300), 1500, 1800),
        (AckTimeout(1800, 300), 7200, 7500),
        (AckTimeout(5, 10), 0, 10),  # the margin alone may outlast a short timeout
    ],
)
def test_a_lease_covers_execution_and_margin_when_they_reach_the_timeout(
    ack_timeout: AckTimeout, task_timeout: float, lease: float | None
) -> None:
    assert ack_timeout.lease_for(task_timeout) == lease


async def test_a_long_task_is_leased_before_it_runs_and_the_lease_settled_after_the_forward(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path)
    delivery = await run(node, encode(task(timeout=50)), BROKER)

    assert delivery.leased == 65
    settles = [entry for entry in node.journal if not entry.startswith("publish logs")]
    assert settles == ["lease 65", f"publish {SUCCESS_ROUTE[0]}/{SUCCESS_ROUTE[1]}", "ack"]
    assert delivery.acked
    events = node.events()
    assert events.index("downloaded") < events.index("leased") < events.index("execution_started")
    [leased] = [notice for notice in node.logs() if notice["event"] == "leased"]
    assert leased["leaseSeconds"] == 65
    assert "60 s" in leased["logMessage"]
    assert events[-1] == "acked"


async def test_a_task_that_ends_within_the_timeout_is_not_leased(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    delivery = await run(node, encode(task(timeout=44)), BROKER)

    assert delivery.leased is None
    assert not any(entry.startswith("lease") for entry in node.journal)
    assert delivery.acked
    assert "leased" not in node.events()


async def test_a_task_crashing_under_a_lease_settles_it_like_the_delivery(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    delivery = await run(node, encode(task("crash", timeout=50)), BROKER)

    assert delivery.leased == 65
    assert delivery.rejected and delivery.requeue is False
    assert node.events()[-2:] == ["crashed", "rejected"]


async def test_a_refused_lease_lets_the_task_run_unleased_and_says_so(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    with capture_logs() as logs:
        delivery = await run(node, encode(task(timeout=50)), BROKER, lease=False)

    assert delivery.leased is None
    assert delivery.acked
    assert "leased" not in node.events()
    assert [entry for entry in logs if entry["event"] == "running_unleased"]


async def test_a_delivery_lost_while_leasing_is_neither_run_nor_settled(tmp_path: Path) -> None:
    executor = SleepingExecutor()
    node = make_node(tmp_path, only(executor))
    with capture_logs() as logs:
        delivery = await run(node, encode(task(timeout=50)), BROKER, lease=None)

    assert not executor.started.is_set()
    assert not delivery.settled
    assert node.storage.uploads == [] and node.storage.files[FILE]
    assert node.forwards() == []
    assert "execution_started" not in node.events()
    assert [entry for entry in logs if entry["event"] == "delivery_lost"]
    await node.assert_work_dir_empty()


async def test_a_leased_task_cancelled_by_shutdown_goes_back_to_the_queue(tmp_path: Path) -> None:
    executor = SleepingExecutor()
    node = make_node(tmp_path, only(executor))
    delivery = FakeDelivery(encode(task(timeout=50)), journal=node.journal)
    deps = dataclasses.replace(node.deps, ack_timeout=BROKER)
    running = asyncio.create_task(process(delivery, deps))
    await asyncio.wait_for(executor.started.wait(), 5)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert delivery.leased == 65
    assert executor.cancelled
    assert delivery.rejected and delivery.requeue is True


def test_a_topology_file_may_set_a_queues_consumer_timeout(tmp_path: Path) -> None:
    path = tmp_path / "topology.toml"
    path.write_text('[[queue]]\nname = "long-runs"\nconsumer_timeout_ms = 7200000\n')
    topology = load_topology(path)

    assert topology.queue[0].arguments() == {"x-consumer-timeout": 7_200_000}
    assert describe(topology) == ["queue long-runs (x-consumer-timeout=7200000)"]
    path.write_text('[[queue]]\nname = "long-runs"\nconsumer_timeout_ms = 0\n')
    with pytest.raises(ConfigError, match="consumer_timeout_ms"):
        load_topology(path)
