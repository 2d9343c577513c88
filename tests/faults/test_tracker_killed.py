"""The real tracker SIGKILLed in the middle of 10 000 notices, then started again: every
notice is stored exactly once and every task's journey is whole (on both databases)."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import httpx
import pytest

from tests.support.cli import StartCli
from tests.support.ledger import REPORT
from tests.support.ports import steady_port
from tests.support.processes import children, running
from tests.support.services import Broker, Names
from tests.support.tracker import (
    BULK_TASKS,
    bulk_notices,
    tracker_env,
    tracker_processes,
    until,
)

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]


@pytest.fixture
def start_cli() -> Iterator[StartCli]:
    """Real `ulos-py` processes, stopped at teardown."""
    with tracker_processes() as start:
        yield start


async def test_a_killed_tracker_loses_nothing_and_doubles_nothing(
    names: Names,
    broker: Broker,
    amqp: aio_pika.abc.AbstractRobustConnection,
    database_url: str,
    start_cli: StartCli,
    tmp_path: Path,
) -> None:
    bodies = bulk_notices()
    assert len(bodies) == 10 * BULK_TASKS
    channel = await amqp.channel()
    name = names.queue("tracker")
    await channel.declare_queue(name, durable=True)
    port = steady_port()  # the tracker comes back on it
    env = tracker_env(names, broker, database_url, port)
    env["ULOS_TRACKER_WRITER"] = "process"  # on both databases: its orphan must stop too
    base = f"http://127.0.0.1:{port}"
    try:
        for start in range(0, len(bodies), 500):  # confirmed, 500 in flight at a time
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(aio_pika.Message(body), name)
                    for body in bodies[start : start + 500]
                )
            )
        tracker = start_cli("tracker", env=env)
        async with httpx.AsyncClient(base_url=base) as client:

            async def stored() -> int:
                try:
                    answer = await client.get("/api/counts")
                except httpx.TransportError:
                    return 0
                return int(answer.json()["notices"]) if answer.status_code == 200 else 0

            started = time.monotonic()

            async def a_good_part() -> int:
                count = await stored()
                return count if count >= len(bodies) // 4 else 0

            some = await until(a_good_part, "a quarter stored", timeout=120, every=0.05)
            helpers = children(tracker.pid)  # its writing process (and multiprocessing's)
            assert helpers, "the tracker writes in a process of its own"
            tracker.send_signal(signal.SIGKILL)
            tracker.wait(timeout=10)
            assert some < len(bodies), "killed too late: everything was already stored"

            async def orphans_gone() -> bool:
                return not any(map(running, helpers))

            await until(orphans_gone, "the tracker's orphaned processes stopped", timeout=10)
            tracker = start_cli("tracker", env=env)

            async def all_stored() -> int:
                return (await stored()) == len(bodies)

            await until(all_stored, "every notice stored after the restart", timeout=240)
            took = time.monotonic() - started
            counts = (await client.get("/api/counts")).json()
            assert counts == {"notices": len(bodies), "unreadable": 0, "tasks": BULK_TASKS}
            page = await client.get("/api/tasks", params={"state": "stuck", "limit": 500})
            assert len(page.json()["items"]) == 500
            one = (await client.get("/api/tasks/k-0421")).json()
            assert [(v["stage"]["routingKey"], v["attempt"]) for v in one["visits"]] == [
                ("a", 1),
                ("b", 1),
            ]
        REPORT.append(
            f"tracker SIGKILLed after {some} of {len(bodies)} notices "
            f"({database_url.split(':')[0]}): all {len(bodies)} stored once, "
            f"{BULK_TASKS} journeys whole, {took:.1f} s in all"
        )
    finally:
        await channel.queue_delete(name)
        await channel.close()
