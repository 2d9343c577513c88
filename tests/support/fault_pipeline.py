"""A small pipeline that survives a broker restart, its tasks, its nodes, and its accounting.

Everything is durable (exchanges, queues) and every message persistent, so a broker that
stops and starts again keeps what it held. Nobody consumes the pipeline's outputs while a
case runs: forwarded tasks, notices and hand-backs pile up in their queues and are read
once at the end, after the nodes stopped, so the counts are exact and the reading itself
cannot make duplicates. While it runs, a case watches queue depths only.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage

from tests.support.cli import ROOT, settings_env
from tests.support.harness import make_zip, node_values, stage, task
from tests.support.ledger import Arrival, Ledger, parse
from tests.support.services import Broker, FtpServer, Names

DONE = "done"
FAILED = "failed"
OUTPUTS = (DONE, FAILED)
BROKER_TROUBLE = (
    aiormq.exceptions.AMQPError,
    ConnectionError,
    OSError,
    RuntimeError,
    TimeoutError,
)


@dataclass(frozen=True)
class Planned:
    task_id: str
    body: dict[str, Any]
    expected: str


@dataclass
class FaultLine:
    """Durable exchanges and queues for one case: one input queue per stage, the two end
    keys, logs and crashes. A task runs the stages in order; the last one fails for every
    fourth task, which then ends at `failed` rather than `done`."""

    names: Names
    broker: Broker
    stages: tuple[str, ...] = ("s1",)
    started: float = field(default_factory=time.monotonic)

    @property
    def logs(self) -> str:
        return self.names.queue("logs")

    @property
    def crashes(self) -> str:
        return self.names.queue("crashes")

    def stage_queue(self, name: str) -> str:
        return self.names.queue(name)

    @property
    def inputs(self) -> list[str]:
        return [self.stage_queue(s) for s in self.stages]

    @property
    def outputs(self) -> list[str]:
        return [self.names.queue(key) for key in OUTPUTS]

    async def connect(self) -> AbstractConnection:
        return await aio_pika.connect(self.broker.url, timeout=10)

    async def declare(self) -> None:
        connection = await self.connect()
        try:
            channel = await connection.channel()
            processing = await channel.declare_exchange(self.names.exchange, durable=True)
            logs = await channel.declare_exchange(self.names.logs_exchange, durable=True)
            crashes = await channel.declare_exchange(self.names.crash_exchange, durable=True)
            for name in self.stages:
                queue = await channel.declare_queue(self.stage_queue(name), durable=True)
                await queue.bind(processing, name)
                await queue.bind(processing, f"{name}-fail")
            for key in OUTPUTS:
                queue = await channel.declare_queue(self.names.queue(key), durable=True)
                await queue.bind(processing, key)
            notices = ((self.logs, logs, "logs"), (self.crashes, crashes, "crash"))
            for queue_name, exchange, key in notices:
                queue = await channel.declare_queue(queue_name, durable=True)
                await queue.bind(exchange, key)
        finally:
            await connection.close()

    async def delete(self) -> None:
        """Remove the case's queues and exchanges (the shared broker keeps nothing of it)."""
        with suppress(*BROKER_TROUBLE):
            connection = await self.connect()
            try:
                channel = await connection.channel()
                for queue in [*self.inputs, *self.outputs, self.logs, self.crashes]:
                    await channel.queue_delete(queue)
                for exchange in (
                    self.names.exchange,
                    self.names.logs_exchange,
                    self.names.crash_exchange,
                ):
                    await channel.exchange_delete(exchange)
            finally:
                await connection.close()

    def registry(self, folder: Path, delay: float) -> Path:
        """Built-in executors: a stage `X` passes and `X-fail` fails, after `delay` s."""
        path = folder / "registry.toml"
        path.write_text(
            '[[route]]\nstage = "*-fail"\nexecutor = "no"\n\n'
            '[[route]]\nstage = "*"\nexecutor = "yes"\n\n'
            f'[executor.yes]\nkind = "builtin"\nbehaviour = "pass"\ndelay_seconds = {delay}\n\n'
            f'[executor.no]\nkind = "builtin"\nbehaviour = "fail"\ndelay_seconds = {delay}\n'
        )
        return path

    def tree(self, fail_last: bool) -> dict[str, Any]:
        """Through every stage to `done`; to `failed` when one fails (the last, if told)."""
        exchange = self.names.exchange
        names = self.stages
        node: dict[str, Any] | None = None
        for index in reversed(range(len(names))):
            last = index == len(names) - 1
            key = f"{names[index]}-fail" if fail_last and last else names[index]
            node = stage(
                exchange,
                key,
                success=node or stage(exchange, DONE),
                failure=stage(exchange, FAILED),
            )
        assert node is not None
        return node

    def plan(
        self,
        ftp: FtpServer,
        count: int,
        batch: str = "t",
        tree: dict[str, Any] | None = None,
        files: dict[str, bytes | str] | None = None,
    ) -> list[Planned]:
        """`count` tasks, each with its own zip on the FTP server. With `tree` every task
        takes it (and ends at `done`); otherwise every fourth fails its last stage."""
        data = make_zip(files or {"main.py": "print('hello')\n", "README.md": "a submission\n"})
        planned = []
        for n in range(count):
            task_id = f"{self.names.prefix}-{batch}{n:03d}"
            path = f"/{self.names.prefix}/{batch}{n:03d}.zip"
            ftp.put(path, data)
            fail = n % 4 == 3
            routing = tree or self.tree(fail_last=fail)
            expected = FAILED if fail and tree is None else DONE
            planned.append(Planned(task_id, task(task_id, path, routing, timeout=60), expected))
        return planned

    async def publish(self, tasks: list[Planned], rate: float | None = None) -> dict[str, float]:
        """Persistent, confirmed, mandatory publishes to each task's first stage; `rate`
        tasks per second, or all at once. When each was confirmed (monotonic clock)."""
        confirmed: dict[str, float] = {}
        connection = await self.connect()
        try:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(self.names.exchange)
            began = time.monotonic()
            for n, planned in enumerate(tasks):
                if rate is not None:
                    await asyncio.sleep(max(0.0, began + n / rate - time.monotonic()))
                await exchange.publish(
                    aio_pika.Message(
                        json.dumps(planned.body).encode(),
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    planned.body["routingTree"]["routingKey"],
                    mandatory=True,
                )
                confirmed[planned.task_id] = time.monotonic()
        finally:
            await connection.close()
        return confirmed

    async def depths(self) -> dict[str, int] | None:
        """Ready messages per queue (None while the broker does not answer)."""
        try:
            async with asyncio.timeout(5):
                connection = await self.connect()
                try:
                    channel = await connection.channel(publisher_confirms=False)
                    underlay = await channel.get_underlay_channel()
                    found = {}
                    for queue in [*self.inputs, *self.outputs, self.logs, self.crashes]:
                        declared = await underlay.queue_declare(queue, passive=True)
                        found[queue] = int(declared.message_count or 0)
                    return found
                finally:
                    await connection.close()
        except BROKER_TROUBLE:
            return None

    async def finished(self) -> int:
        """Copies at the end keys plus crash notices, so far."""
        depths = await self.depths()
        if depths is None:
            return 0
        return sum(depths[q] for q in self.outputs) + depths[self.crashes]

    async def wait_for(self, what: str, count: int, seconds: float) -> None:
        """Until `count` copies reached the end keys (`what` = "done"), or `count` crash
        notices (`what` = "crashes") or log notices (`what` = "logs") were sent."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            depths = await self.depths()
            if depths is not None:
                if what == "crashes":
                    have = depths[self.crashes]
                elif what == "logs":
                    have = depths[self.logs]
                else:
                    have = sum(depths[q] for q in self.outputs)
                if have >= count:
                    return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{what} did not reach {count} within {seconds} s")

    async def settle(
        self, at_least: int, seconds: float, quiet: float = 1.5, idle: float = 5.0
    ) -> None:
        """Until every input queue is empty and no notice came for `quiet` seconds, once
        `at_least` tasks have ended (at a key or with a crash notice); or for `idle` seconds
        if fewer did (some may be lost: the accounting tells); at most `seconds`."""
        deadline = time.monotonic() + seconds
        last: dict[str, int] | None = None
        since = time.monotonic()
        while time.monotonic() < deadline:
            depths = await self.depths()
            if depths != last:
                last, since = depths, time.monotonic()
            elif depths is not None and not any(depths[q] for q in self.inputs):
                ended = sum(depths[q] for q in self.outputs) + depths[self.crashes]
                still = time.monotonic() - since
                if (still >= quiet and ended >= at_least) or still >= idle:
                    return
            await asyncio.sleep(0.2)

    async def account(self, case: str, tasks: list[Planned]) -> Ledger:
        """Read every queue of the pipeline (the nodes have stopped) into a ledger."""
        ledger = Ledger(case, {p.task_id: p.expected for p in tasks})
        ledger.seconds = time.monotonic() - self.started
        connection = await self.connect()
        try:
            channel = await connection.channel(publisher_confirms=False)
            for key in OUTPUTS:
                for message in await drain(channel, self.names.queue(key)):
                    body = parse(message.body)
                    ledger.arrivals.append(Arrival(body["taskId"], key, message.message_id))
            for message in await drain(channel, self.crashes):
                notice = parse(message.body)
                ledger.crashes.setdefault(notice.get("taskId", "?"), []).append(notice)
            ledger.logs = [parse(m.body) for m in await drain(channel, self.logs)]
            for queue in self.inputs:
                for message in await drain(channel, queue):
                    ledger.queued[parse(message.body)["taskId"]] += 1
        finally:
            await connection.close()
        return ledger


async def drain(channel: AbstractChannel, queue_name: str) -> list[AbstractIncomingMessage]:
    """Every message in the queue (nobody else consumes it now), acknowledged."""
    queue = await channel.declare_queue(queue_name, passive=True)
    count = int(queue.declaration_result.message_count or 0)
    taken: list[AbstractIncomingMessage] = []
    if not count:
        return taken
    inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
    tag = await queue.consume(inbox.put, no_ack=True)
    try:
        async with asyncio.timeout(30):
            while len(taken) < count:
                taken.append(await inbox.get())
    finally:
        await queue.cancel(tag)
    return taken


@dataclass
class NodeProcess:
    """A real `ulos-py node` process; its log (JSON lines) goes to a file, never a pipe
    nobody reads (a full pipe would stall the node mid-case)."""

    node_id: str
    process: subprocess.Popen[bytes]
    log_file: Path

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def log(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_file.read_text(errors="replace").splitlines():
            with suppress(ValueError):
                entry = json.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def log_events(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.log() if e.get("event") == event]

    def undelivered_notices(self, since: datetime) -> list[dict[str, Any]]:
        """Notices the node logged as not delivered (the broker did not take them)."""
        return [
            entry
            for entry in self.log_events("notice_not_delivered")
            if datetime.fromisoformat(entry["timestamp"]) >= since
        ]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def stop(self, seconds: float = 30) -> int:
        """SIGTERM, and the exit status (killed if it does not stop in time)."""
        if self.alive:
            self.signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.process.wait, seconds)
        except subprocess.TimeoutExpired:
            self.process.kill()
            await asyncio.to_thread(self.process.wait)
            raise AssertionError(f"node {self.node_id} did not stop within {seconds} s") from None


@dataclass
class Nodes:
    """Starts node processes; whatever still runs at the end is stopped."""

    folder: Path
    started: list[NodeProcess] = field(default_factory=list)

    def start(
        self,
        line: FaultLine,
        ftp: FtpServer,
        stage_name: str,
        node_id: str,
        registry: Path,
        **settings: Any,
    ) -> NodeProcess:
        work_dir = self.folder / f"work-{node_id}"
        values = node_values(
            line.names,
            line.broker,
            ftp,
            work_dir,
            MESSAGE_BROKER_CONSUMPTION_QUEUE=line.stage_queue(stage_name),
            ULOS_NODE_ID=node_id,
            ULOS_PROCESSES=1,
            ULOS_EXECUTORS_FILE=registry,
            **settings,
        )
        log_file = self.folder / f"{node_id}.log"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "ulos_py", "node"],
                cwd=ROOT,
                env=node_env(values),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        node = NodeProcess(node_id, process, log_file)
        self.started.append(node)
        return node

    async def wait_consuming(self, *nodes: NodeProcess, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        for node in nodes:
            while not node.log_events("consuming"):
                if not node.alive:
                    raise AssertionError(f"node {node.node_id} exited: {node.log_file.read_text()}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"node {node.node_id} did not start consuming")
                await asyncio.sleep(0.1)

    async def stop_all(self) -> None:
        for node in self.started:
            if node.alive:
                node.signal(signal.SIGCONT)  # in case a case held it and then failed
                node.signal(signal.SIGTERM)
        for node in self.started:
            with suppress(AssertionError):
                await node.stop()


def node_env(values: Mapping[str, Any]) -> dict[str, str]:
    """The node's environment: ours without settings, plus `values` (DOCKER_HOST too)."""
    return {**settings_env(dict(values)), "PYTHONUNBUFFERED": "1"}
