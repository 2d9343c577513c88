"""The broker goes away while nodes work, and comes back.

First case: the broker stops and starts again while two nodes (a two-stage pipeline) are
mid-run. The nodes reconnect by themselves (the robust connection retries every 2 s), the
broker hands back every unacknowledged task, and every task ends at its key: a task
forwarded but not acknowledged before the stop runs again, and its copy carries the same
message id.

Second case: the broker stops and starts again while the nodes are idle, and tasks are
waiting in the queue when the nodes reconnect (the nodes are held with SIGSTOP meanwhile),
so they are delivered the moment a node's consumer is restored. Every fourth task has no
executor and crashes at once: its crash notice must reach the crash exchange, or the task
must stay in the queue.
"""

from __future__ import annotations

import asyncio
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.fault_pipeline import DONE, Nodes
from tests.support.faults import MakeLine, PrivateBroker
from tests.support.services import FtpServer

pytestmark = [pytest.mark.fault, pytest.mark.timeout(150)]

TASKS = 300
DOWN_SECONDS = 3.0


async def test_broker_restart_mid_run_loses_nothing(
    private_broker: PrivateBroker,
    make_line: MakeLine,
    nodes: Nodes,
    ftp_server: FtpServer,
    tmp_path: Path,
) -> None:
    line = await make_line(private_broker.broker, stages=("s1", "s2"))
    registry = line.registry(tmp_path, delay=0.05)
    prefix = line.names.prefix
    workers = [
        nodes.start(line, ftp_server, name, f"{prefix}-{name}", registry) for name in line.stages
    ]
    await nodes.wait_consuming(*workers)
    tasks = line.plan(ftp_server, TASKS)
    await line.publish(tasks)

    await line.wait_for(DONE, 40, seconds=60)
    ended_before = await line.finished()
    stopping = time.monotonic()
    await asyncio.to_thread(private_broker.stop_app)
    stopped = time.monotonic()
    await asyncio.sleep(DOWN_SECONDS)
    starting = time.monotonic()
    await asyncio.to_thread(private_broker.start_app)
    started = time.monotonic()
    back = datetime.now(UTC)
    await line.settle(TASKS, seconds=90)
    survived = {node.node_id: node.alive for node in workers}
    statuses = [await node.stop() for node in workers]

    ledger = await line.account("broker stop/start", tasks)
    ledger.notes.append(
        f"after {ended_before} tasks had ended: stop_app {stopped - stopping:.1f} s, "
        f"down {starting - stopped:.1f} s, start_app {started - starting:.1f} s"
    )
    if unflagged := ledger.unflagged():
        ledger.notes.append(f"{len(unflagged)} came back without the redelivered flag")
    if undelivered := [n for node in workers for n in node.undelivered_notices(back)]:
        # The broker never got them (see the second case); the nodes' logs hold them.
        ledger.logs += [n["notice"] for n in undelivered if n["routing_key"] == "logs"]
        ledger.notes.append(
            f"{len(undelivered)} notices sent after the broker was back were not delivered"
        )
    ledger.record()
    ledger.check()
    assert survived == dict.fromkeys(survived, True), "a node died with the broker"
    assert statuses == [0, 0]
    assert ledger.count("arrived") == TASKS, "with the broker back, every task completes"
    assert ledger.redelivered(), "the tasks in flight at the stop came back"
    for node in workers:  # both reconnected by themselves and went on working
        acked = [n for n in ledger.events("acked", node.node_id) if after(n, back)]
        assert acked, f"{node.node_id} acknowledged nothing after the broker came back"


RESTARTS = 2
PER_RESTART = 24
# This case found tasks lost after a reconnect: aio-pika restores the consuming channel
# before the publishing one, so a task delivered and crashing at once had its crash notice
# refused and was still rejected. RabbitPublisher now waits for its channel to be ready.


async def test_tasks_waiting_for_reconnecting_nodes_are_not_lost(
    private_broker: PrivateBroker,
    make_line: MakeLine,
    nodes: Nodes,
    ftp_server: FtpServer,
    tmp_path: Path,
) -> None:
    line = await make_line(private_broker.broker)
    registry = tmp_path / "registry.toml"  # no route for `s1-fail`: those crash at once
    registry.write_text(
        '[[route]]\nstage = "s1"\nexecutor = "skip"\n\n'
        '[executor.skip]\nkind = "builtin"\nbehaviour = "pass"\n'
    )
    prefix = line.names.prefix
    workers = [
        nodes.start(
            line, ftp_server, "s1", f"{prefix}-n{n}", registry, MESSAGE_BROKER_PREFETCH_COUNT=10
        )
        for n in (1, 2, 3)  # each restores its channels in an order of its own
    ]
    await nodes.wait_consuming(*workers)
    tasks = []
    began = datetime.now(UTC)
    for restart in range(RESTARTS):
        await asyncio.to_thread(private_broker.stop_app)
        for node in workers:  # held while the broker comes back, so tasks wait for them
            node.signal(signal.SIGSTOP)
        await asyncio.to_thread(private_broker.start_app)
        batch = line.plan(ftp_server, PER_RESTART, batch=f"r{restart}-")
        await line.publish(batch)
        tasks += batch
        for node in workers:
            node.signal(signal.SIGCONT)
        await line.settle(len(tasks), seconds=30)
    statuses = [await node.stop() for node in workers]

    ledger = await line.account("tasks wait for reconnect", tasks)
    undelivered = [n for node in workers for n in node.undelivered_notices(began)]
    if undelivered:
        lost = set(ledger.lost())
        ledger.notes.append(
            f"{len(undelivered)} notices not delivered after reconnecting, "
            f"{sum(1 for n in undelivered if n['notice'].get('taskId') in lost)} of lost tasks"
        )
    ledger.record()
    ledger.check()
    assert statuses == [0, 0, 0]
    assert ledger.count("arrived") == RESTARTS * PER_RESTART * 3 // 4
    assert set(ledger.crash_kinds()) == {"no_executor"}


def after(notice: dict[str, object], moment: datetime) -> bool:
    return datetime.fromisoformat(str(notice["timestamp"])) >= moment
