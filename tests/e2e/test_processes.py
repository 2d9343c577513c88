"""`ulos-py node --processes N`: workers share the queue, a dead one is replaced and its
task comes back, SIGTERM drains them all, and orphans stop by themselves."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.support.cli import StartCli
from tests.support.harness import Pipeline, pipeline
from tests.support.node_processes import (
    arrivals,
    node_env,
    publish_tasks,
)
from tests.support.processes import running
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def line(names: Names, amqp):  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


def pid_of(node_id: str) -> int:
    return int(node_id.rsplit(":", 1)[1])


async def until_started(line: Pipeline, count: int) -> dict[str, str]:
    """taskId -> nodeId of the first `count` tasks whose execution started."""
    started: dict[str, str] = {}
    while len(started) < count:
        notice = await line.next_json("logs", timeout=30)
        if notice["event"] == "execution_started":
            started[notice["taskId"]] = notice["nodeId"]
    return started


async def test_workers_share_the_queue_with_their_own_node_ids(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    start_cli: StartCli,
) -> None:
    node = start_cli(
        "node", "--processes", "2", env=node_env(names, broker, ftp_server, tmp_path, 0.3)
    )
    ids = await publish_tasks(line, names, ftp_server, 16)

    arrived = await arrivals(line, len(ids))
    handled: dict[str, set[str]] = defaultdict(set)
    while not line.empty("logs"):
        notice = await line.next_json("logs")
        handled[notice["nodeId"]].add(notice["taskId"])

    assert sorted(a["taskId"] for a in arrived) == ids
    assert len(handled) == 2, handled.keys()
    assert all(node_id.startswith(f"{names.prefix}-node/w") for node_id in handled)
    assert all(len(tasks) >= 3 for tasks in handled.values())  # both did real work
    assert node.poll() is None


async def test_a_killed_worker_is_replaced_and_its_task_comes_back(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    start_cli: StartCli,
) -> None:
    node = start_cli(
        "node", "--processes", "2", env=node_env(names, broker, ftp_server, tmp_path, 3)
    )
    ids = await publish_tasks(line, names, ftp_server, 4)
    started = await until_started(line, 2)
    victim_task, victim_node = sorted(started.items())[0]
    os.kill(pid_of(victim_node), signal.SIGKILL)

    arrived = await arrivals(line, len(ids))
    redelivered: list[dict[str, Any]] = []
    node_ids: set[str] = set(started.values())
    while not line.empty("logs"):
        notice = await line.next_json("logs")
        node_ids.add(notice["nodeId"])
        if notice["event"] == "received" and "redelivered" in notice["logMessage"]:
            redelivered.append(notice)

    assert sorted(a["taskId"] for a in arrived) == ids  # nothing lost
    assert [n["taskId"] for n in redelivered] == [victim_task]
    assert len(node_ids) == 3  # the replacement has an id of its own
    assert node.poll() is None


async def test_sigterm_drains_every_worker(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    start_cli: StartCli,
) -> None:
    node = start_cli(
        "node",
        "--processes",
        "2",
        env=node_env(names, broker, ftp_server, tmp_path, 2, ULOS_SHUTDOWN_GRACE=20),
    )
    await publish_tasks(line, names, ftp_server, 2)
    started = await until_started(line, 2)
    node.send_signal(signal.SIGTERM)

    arrived = await arrivals(line, 2, timeout=30)
    status = await asyncio.to_thread(node.wait, 30)

    assert status == 0
    assert {a["taskId"] for a in arrived} == set(started)  # both finished within the grace
    assert not [pid for pid in map(pid_of, started.values()) if running(pid)]


async def test_orphaned_workers_stop_when_the_supervisor_is_killed(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    start_cli: StartCli,
) -> None:
    node = start_cli(
        "node", "--processes", "2", env=node_env(names, broker, ftp_server, tmp_path, 0.5)
    )
    await publish_tasks(line, names, ftp_server, 2)
    started = await until_started(line, 2)
    node.kill()

    await arrivals(line, 2, timeout=30)  # they drain what they hold, then stop
    pids = [pid_of(n) for n in started.values()]
    assert await asyncio.to_thread(still_alive_after, pids, 30) == []


def still_alive_after(pids: list[int], seconds: float) -> list[int]:
    """Polls /proc (there is nothing to wait on for processes that are not our children)."""
    deadline = time.monotonic() + seconds
    while (left := [pid for pid in pids if running(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


async def test_a_configuration_error_in_a_worker_stops_the_node_with_status_2(
    names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path, start_cli: StartCli
) -> None:
    env = node_env(names, broker, ftp_server, tmp_path, 0)
    env["ULOS_EXECUTORS_FILE"] = str(tmp_path / "absent.toml")
    node = start_cli("node", "--processes", "2", env=env)

    status = await asyncio.to_thread(node.wait, 60)
    assert node.stderr is not None
    errors = [line for line in node.stderr.read().splitlines() if "configuration error" in line]

    assert status == 2
    assert errors and "absent.toml" in errors[0]
