"""The real tracker SIGKILLed in the middle of 10 000 notices, then started again: every
notice is stored exactly once and every task's journey is whole (on both databases)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path

import aio_pika
import httpx
import pytest

from tests.conftest import Broker, Names
from tests.e2e import conftest as e2e
from tests.e2e.conftest import StartCli
from tests.e2e.test_tracker import free_port, tracker_env, until
from tests.faults.ledger import REPORT
from tests.journeys import Node

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]

start_cli = e2e.start_cli  # the e2e fixture that runs real `ulos-py` processes

TASKS = 1000
"""Each task has 10 notices: two stages of a three-stage tree (7 + 3)."""


def _notices() -> list[bytes]:
    bodies: list[bytes] = []
    for i in range(TASKS):
        node = Node(f"k-{i:04}", node_id=f"n{i % 7}", start=i * 30)
        first = node.stage(("a", "b", "c"))
        second = node.stage(("b", "c"))[:3]  # received, downloaded, execution_started
        bodies += [json.dumps(n.body).encode() for n in (*first, *second)]
    return bodies


async def test_a_killed_tracker_loses_nothing_and_doubles_nothing(
    names: Names,
    broker: Broker,
    amqp: aio_pika.abc.AbstractRobustConnection,
    database_url: str,
    start_cli: StartCli,
    tmp_path: Path,
) -> None:
    bodies = _notices()
    assert len(bodies) == 10 * TASKS
    channel = await amqp.channel()
    name = names.queue("tracker")
    await channel.declare_queue(name, durable=True)
    port = free_port()
    env = tracker_env(names, broker, database_url, port)
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
            tracker.send_signal(signal.SIGKILL)
            tracker.wait(timeout=10)
            assert some < len(bodies), "killed too late: everything was already stored"
            tracker = start_cli("tracker", env=env)

            async def all_stored() -> int:
                return (await stored()) == len(bodies)

            await until(all_stored, "every notice stored after the restart", timeout=240)
            took = time.monotonic() - started
            counts = (await client.get("/api/counts")).json()
            assert counts == {"notices": len(bodies), "unreadable": 0, "tasks": TASKS}
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
            f"{TASKS} journeys whole, {took:.1f} s in all"
        )
    finally:
        await channel.queue_delete(name)
        await channel.close()
