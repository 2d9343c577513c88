"""SIGTERM while a node works through a burst: it stops taking tasks, lets the ones in
flight finish within ULOS_SHUTDOWN_GRACE, hands back those still running when the grace
is over, and exits 0; every task not finished is back in the queue."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from tests.support.fault_pipeline import DONE, Nodes
from tests.support.faults import MakeLine
from tests.support.services import Broker, FtpServer

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

TASKS = 300
PREFETCH = 10


@pytest.mark.parametrize(
    ("delay", "grace"),
    [(0.5, 10.0), (5.0, 0.5)],
    ids=["in-flight-finish-within-grace", "grace-expires-tasks-go-back"],
)
async def test_sigterm_during_a_burst(
    broker: Broker,
    ftp_server: FtpServer,
    make_line: MakeLine,
    nodes: Nodes,
    tmp_path: Path,
    delay: float,
    grace: float,
) -> None:
    line = await make_line(broker)
    node = nodes.start(
        line,
        ftp_server,
        "s1",
        f"{line.names.prefix}-node",
        line.registry(tmp_path, delay=delay),
        MESSAGE_BROKER_PREFETCH_COUNT=PREFETCH,
        ULOS_SHUTDOWN_GRACE=grace,
    )
    await nodes.wait_consuming(node)
    tasks = line.plan(ftp_server, TASKS)
    await line.publish(tasks)

    if grace > delay:
        await line.wait_for(DONE, 20, seconds=60)
    else:  # a full prefetch has started (received, downloaded, execution_started each)
        await line.wait_for("logs", 3 * PREFETCH, seconds=60)
    signalled = time.monotonic()
    node.signal(signal.SIGTERM)
    status = await node.stop(seconds=grace + 20)
    took = time.monotonic() - signalled

    finishing = grace > delay
    case = "SIGTERM, grace covers" if finishing else "SIGTERM, grace expires"
    ledger = await line.account(case, tasks)
    received = {n["taskId"] for n in ledger.events("received")}
    acked = {n["taskId"] for n in ledger.events("acked")}
    returned = {n["taskId"] for n in ledger.events("rejected") if n.get("requeued")}
    ledger.notes.append(
        f"{len(received)} in flight or done at SIGTERM, {len(returned)} handed back; "
        f"exit {status} after {took:.1f} s (grace {grace:g} s)"
    )
    ledger.record()
    ledger.check()
    assert status == 0
    assert took < grace + 5
    assert ledger.count("crashed") == 0
    assert ledger.count("arrived") + ledger.count("queued") == TASKS
    assert ledger.count("queued") > 0, "the burst was over before SIGTERM"
    if finishing:
        assert received == acked == ledger.arrived(), "a started task did not finish"
        assert not returned
    else:
        assert returned == received - acked != set(), "running tasks were not handed back"
        assert all(ledger.queued[task_id] for task_id in returned)
