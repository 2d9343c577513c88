"""Shared helpers for tests against the real broker and FTP server."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from tests.support.services import Broker, FtpServer, Names
from ulos_py.node import run_node
from ulos_py.settings import Settings

REGISTRY = Path(__file__).resolve().parents[2] / "executors" / "registry.toml"


def make_zip(files: dict[str, bytes | str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def zip_names(data: bytes) -> set[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return set(zf.namelist())


def task(
    task_id: str,
    file_path: str,
    tree: dict[str, Any] | None,
    timeout: float = 10,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "taskId": task_id,
        "taskOwnerId": "student-1",
        "filePath": file_path,
        "timeout": timeout,
        "routingTree": tree,
        **extra,
    }


def stage(
    exchange: str,
    key: str,
    success: dict[str, Any] | None = None,
    failure: dict[str, Any] | None = None,
) -> dict[str, Any]:
    node: dict[str, Any] = {"exchange": exchange, "routingKey": key}
    if success is not None:
        node["successRoutingDecision"] = success
    if failure is not None:
        node["failureRoutingDecision"] = failure
    return node


@dataclass
class Pipeline:
    """One test's exchanges and queues: input, logs, crashes and two next-stage targets."""

    names: Names
    connection: AbstractRobustConnection
    channel: aio_pika.abc.AbstractChannel
    inbox: dict[str, asyncio.Queue[AbstractIncomingMessage]] = field(default_factory=dict)

    @property
    def input_queue(self) -> str:
        return self.names.queue("input")

    async def publish(self, body: dict[str, Any] | bytes, priority: int | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.channel.default_exchange.publish(
            aio_pika.Message(data, priority=priority, delivery_mode=2), self.input_queue
        )

    async def next_message(self, which: str, timeout: float = 15) -> AbstractIncomingMessage:
        return await asyncio.wait_for(self.inbox[which].get(), timeout)

    async def next_json(self, which: str, timeout: float = 15) -> dict[str, Any]:
        message = await self.next_message(which, timeout)
        body: dict[str, Any] = json.loads(message.body)
        return body

    async def logs_until(
        self, task_id: str, event: str, timeout: float = 15
    ) -> list[dict[str, Any]]:
        """Log notices of one task up to and including the first with `event`."""
        seen: list[dict[str, Any]] = []
        while True:
            notice = await self.next_json("logs", timeout)
            if notice.get("taskId") == task_id or task_id == "*":
                seen.append(notice)
                if notice["event"] == event:
                    return seen

    async def depth(self) -> int:
        """Messages ready in the input queue (asked of the broker, not a cached answer)."""
        channel = await self.channel.get_underlay_channel()
        result = await channel.queue_declare(self.input_queue, passive=True)
        return int(result.message_count or 0)

    def empty(self, which: str) -> bool:
        return self.inbox[which].empty()


@asynccontextmanager
async def pipeline(names: Names, connection: AbstractRobustConnection) -> AsyncIterator[Pipeline]:
    channel = await connection.channel()
    processing = await channel.declare_exchange(names.exchange, "direct", auto_delete=True)
    logs = await channel.declare_exchange(names.logs_exchange, "direct", auto_delete=True)
    crashes = await channel.declare_exchange(names.crash_exchange, "direct", auto_delete=True)
    line = Pipeline(names, connection, channel)
    await channel.declare_queue(
        line.input_queue, auto_delete=False, arguments={"x-max-priority": 10}
    )
    bindings = {
        "next": (processing, "next-key"),
        "failed": (processing, "failed-key"),
        "logs": (logs, "logs"),
        "crashes": (crashes, "crash"),
    }
    tags = []
    for which, (exchange, key) in bindings.items():
        queue = await channel.declare_queue(names.queue(which), auto_delete=True)
        await queue.bind(exchange, key)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        line.inbox[which] = inbox
        tags.append((queue, await queue.consume(inbox.put, no_ack=True)))
    try:
        yield line
    finally:
        for queue, tag in tags:
            await queue.cancel(tag)
        await channel.queue_delete(line.input_queue)
        await channel.close()


def node_values(
    names: Names, broker: Broker, ftp: FtpServer, work_dir: Path, **overrides: Any
) -> dict[str, Any]:
    """A test node's settings by their environment variable names."""
    values: dict[str, Any] = {
        "MESSAGE_BROKER_HOST": broker.host,
        "MESSAGE_BROKER_PORT": broker.port,
        "MESSAGE_BROKER_USERNAME": broker.username,
        "MESSAGE_BROKER_PASSWORD": broker.password,
        "MESSAGE_BROKER_LOGS_EXCHANGE": names.logs_exchange,
        "MESSAGE_BROKER_LOGS_ROUTING_KEY": "logs",
        "MESSAGE_BROKER_CRASH_EXCHANGE": names.crash_exchange,
        "MESSAGE_BROKER_CRASH_ROUTING_KEY": "crash",
        "MESSAGE_BROKER_CONSUMPTION_QUEUE": names.queue("input"),
        "MESSAGE_BROKER_PREFETCH_COUNT": 4,
        "REMOTE_STORAGE_HOST": ftp.host,
        "REMOTE_STORAGE_PORT": ftp.port,
        "REMOTE_STORAGE_USERNAME": ftp.username,
        "REMOTE_STORAGE_PASSWORD": ftp.password,
        "ULOS_NODE_ID": f"{names.prefix}-node",
        "ULOS_WORK_DIR": work_dir,
        "ULOS_EXECUTORS_FILE": REGISTRY,
        "ULOS_SHUTDOWN_GRACE": 10,
        "ULOS_STORAGE_RETRY_DELAY": 0.1,
        "ULOS_LOG_FORMAT": "json",
        "ULOS_PROCESSES": 1,  # tests that want workers say so (`--processes`)
    }
    values.update(overrides)
    return values


def node_settings(
    names: Names, broker: Broker, ftp: FtpServer, work_dir: Path, **overrides: Any
) -> Settings:
    return Settings(**node_values(names, broker, ftp, work_dir, **overrides))


@asynccontextmanager
async def running_node(settings: Settings) -> AsyncIterator[asyncio.Event]:
    """A node inside the test's event loop; stopped (gracefully) when the block ends."""
    stop = asyncio.Event()
    runner = asyncio.create_task(run_node(settings, stop))
    await asyncio.sleep(0.3)
    if runner.done():
        runner.result()  # surfaces the start-up error
    try:
        yield stop
    finally:
        stop.set()
        await asyncio.wait_for(runner, 30)


def close_connection_named(name: str) -> int:
    """Close only the broker connections with this client-given name (others share the
    broker: closing every connection would break them)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    closed = 0
    for line in listed.stdout.splitlines():
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in properties:
            subprocess.run(
                ["rabbitmqctl", "close_connection", pid, "test: connection loss"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            closed += 1
    return closed


async def next_message(
    queue: aio_pika.abc.AbstractQueue, timeout: float = 10
) -> AbstractIncomingMessage:
    """The queue's next message, waiting for it: `basic.get` answers at once, and a dead-lettered
    copy may still be on its way when the notice that announced it has already arrived."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        message = await queue.get(fail=False, timeout=timeout)
        if message is not None:
            return message
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no message on {queue.name} within {timeout} s")
        await asyncio.sleep(0.05)
