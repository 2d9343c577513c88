"""A node process is killed with SIGKILL mid-task; another node on the queue takes over.

Nothing runs in the killed process to hand its tasks back: the broker sees the connection
die and redelivers every task the node had not acknowledged to the node that is left.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from tests.support.fault_pipeline import DONE, Nodes
from tests.support.faults import MakeLine
from tests.support.ledger import redelivery
from tests.support.services import Broker, FtpServer

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

TASKS = 300


async def test_sigkilled_node_s_tasks_go_to_the_other_node(
    broker: Broker,
    ftp_server: FtpServer,
    make_line: MakeLine,
    nodes: Nodes,
    tmp_path: Path,
) -> None:
    line = await make_line(broker)
    registry = line.registry(tmp_path, delay=0.1)
    prefix = line.names.prefix
    victim, survivor = (
        nodes.start(
            line, ftp_server, "s1", f"{prefix}-{role}", registry, MESSAGE_BROKER_PREFETCH_COUNT=8
        )
        for role in ("victim", "survivor")
    )
    await nodes.wait_consuming(victim, survivor)
    tasks = line.plan(ftp_server, TASKS)
    await line.publish(tasks)

    await line.wait_for(DONE, 60, seconds=60)
    victim.signal(signal.SIGKILL)  # mid-task: it holds up to 8 unacknowledged tasks
    await asyncio.to_thread(victim.process.wait)
    await line.settle(TASKS, seconds=90)
    survived = survivor.alive
    status = await survivor.stop()

    ledger = await line.account("node SIGKILLed mid-task", tasks)
    received = {n["taskId"] for n in ledger.events("received", victim.node_id)}
    acked = {n["taskId"] for n in ledger.events("acked", victim.node_id)}
    unfinished = received - acked  # a lower bound: a kill also cuts notices short
    by_survivor = ledger.events("received", survivor.node_id)
    picked_up = {n["taskId"] for n in by_survivor if redelivery(n)}
    first_seen = {n["taskId"] for n in by_survivor if not redelivery(n)}
    ledger.notes.append(
        f"victim reported {len(received)} tasks, {len(unfinished)} of them unfinished at "
        f"the kill; the survivor took back {len(picked_up)}"
    )
    ledger.record()
    ledger.check()
    assert survived and status == 0
    assert ledger.count("arrived") == TASKS
    assert picked_up, "no task came back to the other node"
    assert not picked_up & first_seen, "a task redelivered to the survivor was its own"
    # Each arrived: taken over, or acknowledged just before the kill cut its notice.
    assert unfinished <= ledger.arrived()
