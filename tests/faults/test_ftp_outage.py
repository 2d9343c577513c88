"""The FTP server goes away for several seconds while tasks keep coming.

The node retries a dropped or refused connection with back-off; once the retries are
spent, the task crashes (`download`, or `upload` when it went mid-task) with a notice that
says why, and the node takes the next task. When the server is back, tasks pass again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.fault_pipeline import Nodes
from tests.support.faults import MakeLine, RestartableFtp
from tests.support.services import Broker

pytestmark = [pytest.mark.fault, pytest.mark.timeout(120)]

TASKS = 300
RATE = 30.0
"""Tasks published per second: about ten seconds of steady traffic."""
AWAY_AFTER = 3.0
AWAY_FOR = 5.0
RETRIES = 2
RETRY_DELAY = 0.2
"""Retries after 0.2 and 0.4 s: well within the outage, so tasks do crash in it."""


async def test_ftp_outage_crashes_tasks_with_a_reason_and_the_node_recovers(
    broker: Broker,
    private_ftp: RestartableFtp,
    make_line: MakeLine,
    nodes: Nodes,
    tmp_path: Path,
) -> None:
    line = await make_line(broker)
    node = nodes.start(
        line,
        private_ftp.server,
        "s1",
        f"{line.names.prefix}-node",
        line.registry(tmp_path, delay=0.02),
        ULOS_STORAGE_RETRIES=RETRIES,
        ULOS_STORAGE_RETRY_DELAY=RETRY_DELAY,
    )
    await nodes.wait_consuming(node)
    tasks = line.plan(private_ftp.server, TASKS)
    publishing = asyncio.create_task(line.publish(tasks, rate=RATE))

    await asyncio.sleep(AWAY_AFTER)
    await asyncio.to_thread(private_ftp.stop)
    await asyncio.sleep(AWAY_FOR)
    await asyncio.to_thread(private_ftp.start)
    back = time.monotonic()
    confirmed = await publishing
    await line.settle(TASKS, seconds=60)
    survived = node.alive
    status = await node.stop()

    ledger = await line.account("FTP server away 5 s", tasks)
    retries = node.log_events("storage_retry")
    ledger.notes.append(f"{len(retries)} transient retries logged by the node")
    ledger.record()
    ledger.check()
    assert survived and status == 0
    assert ledger.count("queued") == 0
    assert ledger.count("crashed") > 0, "the outage made no task crash: it did not bite"
    assert set(ledger.crash_kinds()) <= {"download", "upload"}, ledger.crash_kinds()
    for notices in ledger.crashes.values():
        detail = notices[-1]["error"]["detail"]
        assert f"/{line.names.prefix}/" in detail, detail  # names the file it could not move
    assert retries, "no transient retry before giving up"
    later = [task_id for task_id, at in confirmed.items() if at > back + 1.0]
    assert later, "no task was published after the server came back"
    fates = ledger.fates()
    assert {fates[task_id] for task_id in later} == {"arrived"}, "the node did not recover"
