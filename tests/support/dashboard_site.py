"""A small real pipeline for the dashboard's browser tests: one `ulos-py node` and one
`ulos-py tracker` process on a private set of exchanges and queues of the test broker, the
node's stages served by the built-in executors, submissions on the test FTP server.

Every stage key of the sample messages (`pass`, `testing-1` …) is bound to the node's one
input queue on this run's own exchange, so one node serves every stage; the ends of the
trees (`lab.passed`, `lab.failed`) go to a results queue nobody reads (tasks are delivered).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika

from tests.support.cli import ROOT, settings_env
from tests.support.harness import make_zip, node_values
from tests.support.ports import steady_port
from tests.support.services import Broker, FtpServer, Names

MESSAGES = ROOT / "testing-messages"
DEMO = ("pass", "fail", "crash", "skip", "chain-pass", "chain-fail", "chain-crash")
"""The sample messages whose stages the built-in executors serve."""
ENDS = ("lab.passed", "lab.failed")
STUCK_AFTER = 3
"""Seconds a task may wait at a stage before the tracker calls it stuck (short, to see it)."""


@dataclass(frozen=True)
class Site:
    """The running pipeline: where the dashboard is, and how to send it tasks."""

    url: str
    names: Names
    broker: Broker
    ftp: FtpServer

    @property
    def prefix(self) -> str:
        return self.names.prefix

    def tree(self, node: Any) -> Any:
        """A sample routing tree moved onto this run's exchange."""
        if not isinstance(node, dict):
            return node
        moved = {**node, "exchange": self.names.exchange}
        for branch in ("successRoutingDecision", "failureRoutingDecision"):
            if branch in node:
                moved[branch] = self.tree(node[branch])
        return moved

    @staticmethod
    def stage_keys() -> set[str]:
        keys = {"pass", "fail", "crash", "skip", *(f"testing-{i}" for i in range(1, 6))}
        return keys | {"testing-3-fail", "testing-3-crash"}

    def demo_task(self, name: str) -> dict[str, Any]:
        """A sample message of testing-messages/, with this run's ids, keys and file."""
        message: dict[str, Any] = json.loads((MESSAGES / f"{name}.json").read_text())
        return {
            **message,
            "taskId": f"{self.prefix}/{message['taskId']}",
            "filePath": f"/{self.prefix}/{name}.zip",
            "routingTree": self.tree(message["routingTree"]),
        }

    def chain(self, task_id: str, stages: int = 5, **fields: Any) -> dict[str, Any]:
        """A task through `stages` pass stages (about a second each), then `lab.passed`."""
        node: dict[str, Any] = {"exchange": self.names.exchange, "routingKey": ENDS[0]}
        for number in range(stages, 0, -1):
            node = {
                "exchange": self.names.exchange,
                "routingKey": f"testing-{number}",
                "successRoutingDecision": node,
                "failureRoutingDecision": {
                    "exchange": self.names.exchange,
                    "routingKey": ENDS[1],
                },
            }
        return {
            "taskId": task_id,
            "taskOwnerId": "student-live",
            "filePath": f"/{self.prefix}/chain.zip",
            "timeout": 10,
            "routingTree": node,
            **fields,
        }

    def upload(self, remote: str) -> None:
        self.ftp.put(remote, make_zip({"main.py": "print('hello, lab')\n"}))

    def publish(self, *tasks: dict[str, Any]) -> None:
        """Send tasks to their first stage (as a backend would: persistent JSON)."""
        asyncio.run(self._publish(tasks))

    async def _publish(self, tasks: tuple[dict[str, Any], ...]) -> None:
        connection = await aio_pika.connect(self.broker.url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(self.names.exchange)
            for body in tasks:
                message = aio_pika.Message(json.dumps(body).encode(), delivery_mode=2)
                await exchange.publish(message, body["routingTree"]["routingKey"], mandatory=True)


async def declare(names: Names, broker: Broker, stage_keys: set[str]) -> None:
    """The run's topology: processing, logs and crash exchanges; the node's input queue with
    every stage key; a results queue for the ends; the tracker's queue on logs and crashes."""
    connection = await aio_pika.connect(broker.url)
    async with connection:
        channel = await connection.channel()
        processing = await channel.declare_exchange(names.exchange, "direct", durable=True)
        logs = await channel.declare_exchange(names.logs_exchange, "direct", durable=True)
        crashes = await channel.declare_exchange(names.crash_exchange, "direct", durable=True)
        inbox = await channel.declare_queue(names.queue("input"), durable=True)
        for key in stage_keys:
            await inbox.bind(processing, key)
        results = await channel.declare_queue(names.queue("results"), durable=True)
        for end in ENDS:
            await results.bind(processing, end)
        tracker = await channel.declare_queue(names.queue("tracker"), durable=True)
        await tracker.bind(logs, "logs")
        await tracker.bind(crashes, "crash")


async def remove(names: Names, broker: Broker) -> None:
    connection = await aio_pika.connect(broker.url)
    async with connection:
        channel = await connection.channel()
        for queue in ("input", "results", "tracker"):
            await channel.queue_delete(names.queue(queue))
        for exchange in (names.exchange, names.logs_exchange, names.crash_exchange):
            await channel.exchange_delete(exchange)


def tracker_values(
    names: Names, broker: Broker, ftp: FtpServer, database: str, port: int
) -> dict[str, Any]:
    return {
        "REMOTE_STORAGE_HOST": ftp.host,
        "REMOTE_STORAGE_PORT": ftp.port,
        "REMOTE_STORAGE_USERNAME": ftp.username,
        "REMOTE_STORAGE_PASSWORD": ftp.password,
        "MESSAGE_BROKER_HOST": broker.host,
        "MESSAGE_BROKER_PORT": broker.port,
        "MESSAGE_BROKER_USERNAME": broker.username,
        "MESSAGE_BROKER_PASSWORD": broker.password,
        "ULOS_TRACKER_QUEUE": names.queue("tracker"),
        "ULOS_TRACKER_PORT": port,
        "ULOS_TRACKER_DATABASE": database,
        "ULOS_TRACKER_STUCK_AFTER": STUCK_AFTER,
        "ULOS_LOG_FORMAT": "json",
    }


def wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the tracker answers /healthz with 200; fails with its output if it died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the tracker stopped at start: {_output(process)}")
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise AssertionError(f"the tracker did not answer /healthz within {timeout} s")


def _output(process: subprocess.Popen[bytes]) -> str:
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=5)
    err = process.stderr.read().decode(errors="replace") if process.stderr else ""
    return err[-3000:]


@contextlib.contextmanager
def started(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """`python -m ulos_py ARGS` running for the block; stopped with SIGTERM (then killed)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ulos_py", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr is not None:
            process.stderr.close()


@contextlib.contextmanager
def running_site(
    broker: Broker,
    ftp: FtpServer,
    work: Path,
    database: str,
    node: bool = True,
    tracker_extra: dict[str, Any] | None = None,
    node_extra: dict[str, Any] | None = None,
) -> Iterator[Site]:
    """The tracker (and a node) on a fresh topology, all removed afterwards; `tracker_extra`
    and `node_extra` add or replace their settings (a token, a registry)."""
    names = Names(f"d{uuid.uuid4().hex[:8]}")
    port = steady_port()  # the tracker listens on it after the topology and the node
    site = Site(f"http://127.0.0.1:{port}", names, broker, ftp)
    asyncio.run(declare(names, broker, site.stage_keys()))
    try:
        values = {**tracker_values(names, broker, ftp, database, port), **(tracker_extra or {})}
        tracker_env = settings_env(values)
        with contextlib.ExitStack() as stack:
            tracker = stack.enter_context(started(["tracker"], tracker_env))
            if node:
                values = node_values(names, broker, ftp, work, **(node_extra or {}))
                stack.enter_context(started(["node"], settings_env(values)))
            wait_healthy(site.url, tracker)
            yield site
    finally:
        asyncio.run(remove(names, broker))
