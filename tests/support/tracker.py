"""What the tracker's tests share: its environment, a free port, polling with a deadline,
notices in bulk, and its processes started and stopped for a test."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.support.cli import ROOT, StartCli, settings_env
from tests.support.journeys import Node
from tests.support.services import Broker, Names

BULK_TASKS = 1000
"""Tasks of `bulk_notices`: each has 10 notices, two stages of a three-stage tree (7 + 3)."""


def tracker_env(names: Names, broker: Broker, database_url: str, port: int) -> dict[str, str]:
    return settings_env(
        {
            "MESSAGE_BROKER_HOST": broker.host,
            "MESSAGE_BROKER_PORT": broker.port,
            "MESSAGE_BROKER_USERNAME": broker.username,
            "MESSAGE_BROKER_PASSWORD": broker.password,
            "ULOS_TRACKER_QUEUE": names.queue("tracker"),
            "ULOS_TRACKER_PORT": port,
            "ULOS_TRACKER_DATABASE": database_url,
            "ULOS_TRACKER_STUCK_AFTER": 2,
            "ULOS_LOG_FORMAT": "json",
        }
    )


async def until(
    check: Callable[[], Any], what: str, timeout: float = 30, every: float = 0.2
) -> Any:
    """Ask `check` until it gives something true; fail naming `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(every)
    pytest.fail(f"{what}: not within {timeout} s (last: {last!r})")


async def journey_in(
    client: httpx.AsyncClient, task_id: str, *states: str, at: str | None = None
) -> Any:
    """The task's journey once it is in one of `states` (at stage `at`, when given)."""
    answer = await client.get(f"/api/tasks/{task_id}")
    if answer.status_code != 200 or answer.json()["state"] not in states:
        return None
    if at is not None and (answer.json()["stage"] or {}).get("routingKey") != at:
        return None
    return answer.json()


async def status_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`ulos-py status ARGS...`, the real console command."""
    command = [sys.executable, "-m", "ulos_py", "status", *args]
    return await asyncio.to_thread(
        subprocess.run, command, capture_output=True, text=True, cwd=ROOT, timeout=30, check=False
    )


def bulk_notices() -> list[bytes]:
    """BULK_TASKS tasks' notices as bodies, 10 each, from seven nodes."""
    bodies: list[bytes] = []
    for i in range(BULK_TASKS):
        node = Node(f"k-{i:04}", node_id=f"n{i % 7}", start=i * 30)
        first = node.stage(("a", "b", "c"))
        second = node.stage(("b", "c"))[:3]  # received, downloaded, execution_started
        bodies += [json.dumps(n.body).encode() for n in (*first, *second)]
    return bodies


@contextmanager
def tracker_processes() -> Iterator[StartCli]:
    """Start `ulos-py ARGS...` processes; each is stopped (SIGTERM, then SIGKILL) after."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [sys.executable, "-m", "ulos_py", *args],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            if process.stderr is not None:
                process.stderr.close()
