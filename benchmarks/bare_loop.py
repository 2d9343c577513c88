"""The bare baseline: the node's broker and FTP work written as a lean asyncio loop.

Per delivery: download the zip (pooled aioftp connection), unpack and pack it in one worker
thread, upload it to the same path, publish seven log notices and one forward (persistent,
confirmed; the forward mandatory), wait for the notices' confirms, ack, publish `acked`.
No validation, no safety checks, no retries: what any careful implementation must pay.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import signal
import sys
import tempfile
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aio_pika
import aioftp
from aio_pika.abc import AbstractIncomingMessage
from bench_fixtures import FTP_PASSWORD, FTP_USER, LOGS_KEY, say

CHUNK = 1 << 16


@dataclass(frozen=True)
class BareConfig:
    broker_url: str
    input_queue: str
    processing_exchange: str
    logs_exchange: str
    prefetch: int
    ftp_host: str
    ftp_port: int
    ftp_connections: int
    work_dir: str
    node_id: str


class FtpPool:
    """At most `size` logged-in aioftp clients, reused; a failed one is dropped."""

    def __init__(self, host: str, port: int, size: int) -> None:
        self._host, self._port = host, port
        self._slots = asyncio.Semaphore(size)
        self._idle: list[aioftp.Client] = []

    @asynccontextmanager
    async def client(self) -> AsyncIterator[aioftp.Client]:
        async with self._slots:
            client = self._idle.pop() if self._idle else await self._connect()
            try:
                yield client
            except BaseException:
                client.close()
                raise
            self._idle.append(client)

    async def _connect(self) -> aioftp.Client:
        client = aioftp.Client(socket_timeout=30, connection_timeout=30)
        await client.connect(self._host, self._port)
        await client.login(FTP_USER, FTP_PASSWORD)
        return client

    async def download(self, path: str) -> bytes:
        async with self.client() as client, client.download_stream(path) as stream:
            return b"".join([block async for block in stream.iter_by_block(CHUNK)])

    async def upload(self, data: bytes, path: str) -> None:
        async with self.client() as client, client.upload_stream(path) as stream:
            await stream.write(data)

    def close(self) -> None:
        for client in self._idle:
            client.close()


def repack(data: bytes, work_dir: str, output_name: str) -> bytes:
    """Write the zip to a temp dir, unpack it, add the stage output, pack it again."""
    root = Path(tempfile.mkdtemp(prefix="bare-", dir=work_dir))
    try:
        archive = root / "task.zip"
        archive.write_bytes(data)
        files = root / "files"
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(files)
        (files / output_name).write_text("bare baseline: pass\n")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(files.rglob("*")):
                zf.write(path, path.relative_to(files).as_posix())
        return archive.read_bytes()
    finally:
        shutil.rmtree(root, ignore_errors=True)


def json_message(body: dict[str, Any], **properties: Any) -> aio_pika.Message:
    return aio_pika.Message(
        json.dumps(body).encode(),
        content_type="application/json",
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        **properties,
    )


class BareLine:
    """Per delivery: download, unpack+pack, upload, 7 notices + 1 forward (all confirmed), ack."""

    def __init__(
        self,
        config: BareConfig,
        pool: FtpPool,
        processing: aio_pika.abc.AbstractExchange,
        logs: aio_pika.abc.AbstractExchange,
    ) -> None:
        self._config = config
        self._pool = pool
        self._processing = processing
        self._logs = logs
        self._running: set[asyncio.Task[Any]] = set()

    def _notice(self, task: dict[str, Any], event: str, **fields: Any) -> asyncio.Task[Any]:
        stage = task["routingTree"]
        body = {
            **task,
            "logMessage": f"task {task['taskId']}: {event}",
            "event": event,
            "nodeId": self._config.node_id,
            "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "stage": {"exchange": stage["exchange"], "routingKey": stage["routingKey"]},
            **fields,
        }
        message = json_message(body, correlation_id=task["taskId"])
        return asyncio.ensure_future(self._logs.publish(message, LOGS_KEY))

    async def handle(self, message: AbstractIncomingMessage) -> None:
        current = asyncio.current_task()
        assert current is not None
        self._running.add(current)
        try:
            await self._process(message)
        except Exception as exc:
            say(f"bare: task failed: {exc!r}")
            await message.reject(requeue=False)
        finally:
            self._running.discard(current)

    async def _process(self, message: AbstractIncomingMessage) -> None:
        task = json.loads(message.body)
        stage, path = task["routingTree"], task["filePath"]
        notices = [self._notice(task, "received")]
        data = await self._pool.download(path)
        notices.append(self._notice(task, "downloaded"))
        notices.append(self._notice(task, "execution_started"))
        output_name = f"output_{stage['exchange']}_{stage['routingKey']}.txt"
        packed = await asyncio.to_thread(repack, data, self._config.work_dir, output_name)
        notices.append(self._notice(task, "execution_finished", outcome="pass"))
        await self._pool.upload(packed, path)
        notices.append(self._notice(task, "uploaded"))
        hop = stage["successRoutingDecision"]
        digest = hashlib.sha256(f"{task['taskId']}\x00{hop['routingKey']}".encode()).hexdigest()
        forward = json_message(
            {**task, "routingTree": hop}, message_id=digest[:32], correlation_id=task["taskId"]
        )
        await self._processing.publish(forward, hop["routingKey"], mandatory=True)
        notices.append(self._notice(task, "forwarded", target=hop))
        await asyncio.gather(*notices)
        await message.ack()
        await self._notice(task, "acked")

    async def drain(self) -> None:
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)


async def bare_run(config: BareConfig) -> int:
    """Consume until SIGTERM; exit code 0, or 3 when the broker dropped the connection."""
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    lost: list[BaseException] = []

    def on_close(_: object, exc: BaseException | None = None) -> None:
        if not stop.is_set():
            lost.append(exc or ConnectionError("closed"))
            stop.set()

    Path(config.work_dir).mkdir(parents=True, exist_ok=True)
    pool = FtpPool(config.ftp_host, config.ftp_port, config.ftp_connections)
    connection = await aio_pika.connect(
        config.broker_url, client_properties={"connection_name": config.node_id}
    )
    connection.close_callbacks.add(on_close)
    try:
        consuming = await connection.channel()
        await consuming.set_qos(prefetch_count=config.prefetch)
        publishing = await connection.channel(publisher_confirms=True, on_return_raises=True)
        line = BareLine(
            config,
            pool,
            await publishing.get_exchange(config.processing_exchange, ensure=False),
            await publishing.get_exchange(config.logs_exchange, ensure=False),
        )
        queue = await consuming.get_queue(config.input_queue, ensure=False)
        tag = await queue.consume(line.handle)
        await stop.wait()
        if lost:
            say(f"bare: the broker closed the connection: {lost[0]!r}")
            return 3
        await queue.cancel(tag)
        await line.drain()
    finally:
        pool.close()
        await connection.close()
    return 0


def bare_main(config: BareConfig) -> None:
    """Process target of the baseline; SIGTERM stops it gracefully."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.exit(asyncio.run(bare_run(config)))
