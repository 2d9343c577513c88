"""An interrupted task is not a crash (SPEC §3): the broker restarts twice under a busy node.

300 tasks go through one stage served by a node of two worker processes, each with a
prefetch of 10, while the broker is stopped and started twice with tasks in flight. The
stage queues are quorum queues, which count every return of a delivery (`x-delivery-count`),
so a task handed out again always says so. A task whose delivery went with the connection
is not finished: its node logs `task_interrupted` and publishes no crash notice, the broker
hands it out again, and its `received` notice says `redelivered`. Every task arrives, no
crash notice is sent, and copies of a task carry one `message_id`.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.fault_pipeline import DONE, Nodes
from tests.support.faults import MakeLine, PrivateBroker
from tests.support.services import FtpServer

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

TASKS = 300
RESTARTS = 2
DOWN_SECONDS = 2.0


async def test_tasks_interrupted_by_broker_restarts_arrive_without_crash_notices(
    private_broker: PrivateBroker,
    make_line: MakeLine,
    nodes: Nodes,
    ftp_server: FtpServer,
    tmp_path: Path,
) -> None:
    line = await make_line(private_broker.broker, quorum=True)
    registry = line.registry(tmp_path, delay=1.0)
    node = nodes.start(
        line,
        ftp_server,
        "s1",
        f"{line.names.prefix}-node",
        registry,
        ULOS_PROCESSES=2,
        MESSAGE_BROKER_PREFETCH_COUNT=10,
    )
    await nodes.wait_consuming(node)
    tasks = line.plan(ftp_server, TASKS)
    await line.publish(tasks)

    outages = []
    for restart in range(RESTARTS):
        await line.wait_for(DONE, (restart + 1) * TASKS // 8, seconds=60)
        began = time.monotonic()
        await asyncio.to_thread(private_broker.restart, DOWN_SECONDS)
        outages.append(time.monotonic() - began)
    await line.settle(TASKS, seconds=90)
    survived = node.alive
    status = await node.stop()

    ledger = await line.account("interrupted, not crashed", tasks)
    interrupted = node.log_events("task_interrupted")
    ledger.notes.append(
        f"{RESTARTS} broker restarts ({', '.join(f'{s:.1f} s' for s in outages)}); "
        f"{len(interrupted)} tasks logged as interrupted"
    )
    ledger.record()
    ledger.check()
    assert survived, "the node died with the broker"
    assert status == 0
    assert ledger.count("arrived") == TASKS
    assert ledger.crashes == {}, f"crash notices: {list(ledger.crashes.values())[:3]}"
    assert ledger.redelivered(), "no task was in flight at a restart: the case did not bite"
    assert not ledger.unflagged(), "a task received again did not say it was redelivered"
    assert all("connection lost" in entry["reason"] for entry in interrupted)
