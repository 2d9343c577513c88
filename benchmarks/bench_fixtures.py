"""What the benchmark sets up around the system under test: an FTP server in its own
process, uniquely named broker topology, and the task zip. None of it is measured."""

from __future__ import annotations

import asyncio
import base64
import io
import multiprocessing
import random
import signal
import sys
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import aioftp
from aio_pika.abc import AbstractChannel
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import FTPServer, ThreadedFTPServer

FTP_USER = "bench"
FTP_PASSWORD = "bench-secret"
STAGE_KEY = "skip"  # the shipped registry maps it to the built-in executor that passes at once
DONE_KEY = "done"
LOGS_KEY = "logs"
CRASH_KEY = "crash"
ZIP_TARGET_BYTES = 10 * 1024
ZIP_FILES = 20


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# The task zip


def make_zip(seed: int) -> bytes:
    """About 10 KiB of deflated zip holding 20 small files that do not compress to nothing."""
    rng = random.Random(seed)
    names = [f"src/module_{i:02d}.py" for i in range(8)]
    names += [f"tests/test_{i:02d}.py" for i in range(8)]
    names += ["README.md", "data/input.csv", "data/expected.csv", "printer.properties"]
    payloads = [rng.randbytes(4096) for _ in names]
    size = 300
    for _ in range(8):  # converge on the target size
        data = _zip_with(names, payloads, size)
        if abs(len(data) - ZIP_TARGET_BYTES) < 200:
            break
        size = max(16, int(size * ZIP_TARGET_BYTES / len(data)))
    return data


def _zip_with(names: list[str], payloads: list[bytes], size: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, payload in zip(names, payloads, strict=True):
            text = base64.encodebytes(payload[:size]).decode()
            zf.writestr(name, f"# {name}: generated benchmark content\n{text}")
    return buffer.getvalue()


def make_incompressible_zip(size: int, seed: int, files: int = 4) -> bytes:
    """A deflated zip of `files` files of random bytes, `size` in all: a big submission
    (binaries, media) whose zip is as large as its content, so transfers carry `size`."""
    rng = random.Random(seed)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(files):
            zf.writestr(f"data/blob_{i:02d}.bin", rng.randbytes(size // files))
    return buffer.getvalue()


def zip_folder(folder: Path) -> bytes:
    """The files under `folder` as a deflated zip, paths relative to it (a real submission)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            zf.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def place_zips(root: Path, label: str, count: int, data: bytes) -> list[str]:
    """Put the zip at `count` distinct paths on the FTP server's disk (set-up, not measured)."""
    folder = root / "bench" / label
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        (folder / f"task-{i:05d}.zip").write_bytes(data)
        paths.append(f"/bench/{label}/task-{i:05d}.zip")
    return paths


# FTP server: pyftpdlib in its own process, so it shares no GIL with the node or the baseline


class QuietFtpHandler(FTPHandler):  # type: ignore[misc]
    """No per-command logging: formatting those lines would cost the server CPU for nothing."""

    def log(self, msg: str, logfun: object = None) -> None:
        pass

    def logline(self, msg: str, logfun: object = None) -> None:
        pass

    def log_cmd(self, cmd: str, arg: str, respcode: int, respstr: str) -> None:
        pass


def serve_ftp(root: str, kind: str, port_out: Any) -> None:
    """Process target: serve `root` on a free loopback port, sent back through `port_out`."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us with SIGTERM
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, root, perm="elradfmwMT")
    handler = type("BenchFtpHandler", (QuietFtpHandler,), {"authorizer": authorizer})
    server_class = ThreadedFTPServer if kind == "threaded" else FTPServer
    server = server_class(("127.0.0.1", 0), handler)
    port_out.send(server.address[1])
    port_out.close()
    server.serve_forever(handle_exit=False)


@dataclass(frozen=True)
class Ftp:
    host: str
    port: int
    root: Path
    pid: int


@asynccontextmanager
async def ftp_server(root: Path, kind: str) -> AsyncIterator[Ftp]:
    root.mkdir(parents=True)
    ctx = multiprocessing.get_context("spawn")
    receiver, sender = ctx.Pipe(duplex=False)
    process = ctx.Process(
        target=serve_ftp, args=(str(root), kind, sender), name="bench-ftp", daemon=True
    )
    process.start()
    try:
        if not await asyncio.to_thread(receiver.poll, 30):
            raise RuntimeError("the FTP server did not start within 30 s")
        ftp = Ftp("127.0.0.1", receiver.recv(), root, process.pid or 0)
        client = aioftp.Client()
        await client.connect(ftp.host, ftp.port)
        await client.login(FTP_USER, FTP_PASSWORD)
        await client.quit()
        yield ftp
    finally:
        await stop_process(process)


async def stop_process(process: multiprocessing.process.BaseProcess, grace: float = 5) -> None:
    if process.is_alive():
        process.terminate()
        await asyncio.to_thread(process.join, grace)
    if process.is_alive():
        process.kill()
        await asyncio.to_thread(process.join, grace)


# Broker topology: unique names per run, deleted at the end


@dataclass(frozen=True)
class Broker:
    url: str
    host: str
    port: int
    username: str
    password: str

    @classmethod
    def parse(cls, url: str) -> Broker:
        parts = urlsplit(url)
        return cls(
            url,
            parts.hostname or "127.0.0.1",
            parts.port or 5672,
            unquote(parts.username or "guest"),
            unquote(parts.password or "guest"),
        )


@dataclass(frozen=True)
class Topology:
    prefix: str
    stage: str = STAGE_KEY
    """The routing key of the tasks' only stage: what the worker's registry must serve."""
    other_stages: tuple[str, ...] = ()
    """More stage keys bound to the input queue, for a run that mixes kinds of task."""

    @property
    def processing(self) -> str:
        return f"{self.prefix}.processing"

    @property
    def logs(self) -> str:
        return f"{self.prefix}.logs"

    @property
    def crashes(self) -> str:
        return f"{self.prefix}.crashes"

    @property
    def stages(self) -> tuple[str, ...]:
        return (self.stage, *self.other_stages)

    def queue(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def bindings(self) -> list[tuple[str, str, str]]:
        """(queue, exchange, routing key) of every queue the benchmark declares."""
        return [
            *((self.queue("input"), self.processing, key) for key in self.stages),
            (self.queue("done"), self.processing, DONE_KEY),
            (self.queue("logs"), self.logs, LOGS_KEY),
            (self.queue("crashes"), self.crashes, CRASH_KEY),
        ]

    def done_hop(self) -> dict[str, str]:
        return {"exchange": self.processing, "routingKey": DONE_KEY}

    def task(self, label: str, index: int, path: str, stage: str | None = None) -> dict[str, Any]:
        """A SPEC §2 task whose only stage is `stage` (default `self.stage`), forwarded to
        `done` on success."""
        return {
            "taskId": f"{self.prefix}-{label}-{index:05d}",
            "taskOwnerId": f"student-{index % 97:03d}",
            "filePath": path,
            "timeout": 60,
            "routingTree": {
                "exchange": self.processing,
                "routingKey": stage or self.stage,
                "successRoutingDecision": self.done_hop(),
            },
            "course": "bench-101",  # an unknown field: it must travel on
        }


async def declare_topology(channel: AbstractChannel, topology: Topology) -> None:
    exchanges = {}
    for name in (topology.processing, topology.logs, topology.crashes):
        exchanges[name] = await channel.declare_exchange(
            name, aio_pika.ExchangeType.DIRECT, durable=True
        )
    for queue_name, exchange, key in topology.bindings():
        queue = await channel.declare_queue(queue_name, durable=True)
        await queue.bind(exchanges[exchange], key)
    await declare_cancellations(channel)


CANCELLATIONS = "ulos-cancellations"
"""The nodes' default cancellation exchange and stream (SPEC §8), as the sample topology
declares them; shared by every run (declaring them again changes nothing)."""


async def declare_cancellations(
    channel: AbstractChannel, exchange_name: str = CANCELLATIONS, stream: str = CANCELLATIONS
) -> None:
    exchange = await channel.declare_exchange(exchange_name, "fanout", durable=True)
    queue = await channel.declare_queue(
        stream, durable=True, arguments={"x-queue-type": "stream", "x-max-age": "86400s"}
    )
    await queue.bind(exchange, "")


async def delete_topology(broker: Broker, topology: Topology) -> None:
    """On a fresh connection, so it works whatever state the run's connection is in."""
    connection = await aio_pika.connect(broker.url)
    async with connection:
        for queue_name in dict.fromkeys(queue for queue, _, _ in topology.bindings()):
            with suppress(aio_pika.exceptions.AMQPError):
                channel = await connection.channel()
                await channel.queue_delete(queue_name)
                await channel.close()
        for exchange in (topology.processing, topology.logs, topology.crashes):
            with suppress(aio_pika.exceptions.AMQPError):
                channel = await connection.channel()
                await channel.exchange_delete(exchange)
                await channel.close()


async def publish_tasks(
    channel: AbstractChannel,
    topology: Topology,
    bodies: list[bytes],
    keys: list[str] | None = None,
) -> None:
    """Publish every task (confirmed, persistent) before the worker starts, each with its
    routing key in `keys` (default: all to `topology.stage`)."""
    exchange = await channel.get_exchange(topology.processing, ensure=False)
    keys = keys or [topology.stage] * len(bodies)
    for start in range(0, len(bodies), 250):
        await asyncio.gather(
            *(
                exchange.publish(
                    aio_pika.Message(
                        body,
                        content_type="application/json",
                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
                    ),
                    key,
                    mandatory=True,
                )
                for body, key in zip(
                    bodies[start : start + 250], keys[start : start + 250], strict=True
                )
            )
        )


async def queue_depth(channel: AbstractChannel, name: str) -> int:
    underlay = await channel.get_underlay_channel()
    result = await underlay.queue_declare(name, passive=True)
    return int(result.message_count or 0)


async def settled_depth(channel: AbstractChannel, name: str, expected: int) -> int:
    """Queue depth once it reaches `expected` or stops changing (confirms may still land)."""
    depth, previous = await queue_depth(channel, name), -1
    for _ in range(50):
        if depth >= expected or depth == previous:
            return depth
        await asyncio.sleep(0.2)
        previous, depth = depth, await queue_depth(channel, name)
    return depth
