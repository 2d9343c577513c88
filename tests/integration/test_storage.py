"""The FTP adapter inside a node: connections are reused, transient errors retried."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.support.fakes import zip_bytes, zip_names
from tests.support.harness import (
    Pipeline,
    make_zip,
    node_settings,
    pipeline,
    running_node,
    stage,
    task,
)
from tests.support.services import Broker, FtpServer, Names
from ulos_py.adapters.ftp import FtpAddress, FtpStorage, RetryPolicy
from ulos_py.archive import ArchiveLimits
from ulos_py.errors import ConfigError, StorageRefused, StorageUnavailable
from ulos_py.node import run_node
from ulos_py.zip_stream import plan_rewrite

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def line(names: Names, amqp):  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


def tree(names: Names) -> dict:
    return stage(names.exchange, "skip", success=stage(names.exchange, "next-key"))


async def test_connections_are_reused_across_tasks(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    for n in range(12):
        ftp_server.put(f"/{names.prefix}/{n}.zip", make_zip({"a.txt": str(n)}))
    settings = node_settings(names, broker, ftp_server, tmp_path, ULOS_STORAGE_CONNECTIONS=2)
    before = ftp_server.handler.logins
    types_before = ftp_server.handler.type_commands
    commands_before = ftp_server.handler.commands.copy()
    async with running_node(settings):
        for n in range(12):
            await line.publish(task(f"t-{n}", f"/{names.prefix}/{n}.zip", tree(names)))
        for _ in range(12):
            await line.next_json("next")
    # 24 transfers (12 downloads, 12 uploads) over at most 2 logged-in connections
    assert ftp_server.handler.logins - before <= 2
    # binary mode is set once per connection, not before each transfer
    assert 1 <= ftp_server.handler.type_commands - types_before <= 2
    # per task, one round trip per command: a passive connection and RETR down, a passive
    # connection and STOR to a temporary name, RNFR and RNTO to put it in place; nothing else
    sent = ftp_server.handler.commands - commands_before
    per_task = {verb: n for verb, n in sent.items() if verb not in ("USER", "PASS", "TYPE")}
    assert per_task == {"EPSV": 24, "RETR": 12, "STOR": 12, "RNFR": 12, "RNTO": 12}


async def test_transient_errors_are_retried(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    name = f"{names.prefix}-flaky.zip"
    ftp_server.put(f"/{names.prefix}/{name}", make_zip({"a.txt": "x"}))
    ftp_server.handler.transient_failures[name] = 2
    settings = node_settings(names, broker, ftp_server, tmp_path, ULOS_STORAGE_RETRIES=3)
    async with running_node(settings):
        await line.publish(task("t-flaky", f"/{names.prefix}/{name}", tree(names)))
        forwarded = await line.next_json("next")
    assert forwarded["taskId"] == "t-flaky"
    assert ftp_server.handler.transient_failures[name] == 0
    assert line.empty("crashes")


async def test_lasting_errors_crash_after_the_retries(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    name = f"{names.prefix}-down.zip"
    ftp_server.put(f"/{names.prefix}/{name}", make_zip({"a.txt": "x"}))
    ftp_server.handler.transient_failures[name] = 100
    settings = node_settings(names, broker, ftp_server, tmp_path, ULOS_STORAGE_RETRIES=2)
    async with running_node(settings):
        await line.publish(task("t-down", f"/{names.prefix}/{name}", tree(names)))
        crash = await line.next_json("crashes")
    assert crash["error"]["kind"] == "download"
    assert "450" in crash["error"]["detail"]
    assert ftp_server.handler.transient_failures[name] == 100 - 3  # first try + 2 retries


async def test_a_wrong_password_stops_the_node_at_start(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    settings = node_settings(
        names, broker, ftp_server, tmp_path, REMOTE_STORAGE_PASSWORD="wrong-password"
    )
    await line.publish(task("t-creds", f"/{names.prefix}/x.zip", tree(names)))
    with pytest.raises(ConfigError) as caught:
        await asyncio.wait_for(run_node(settings, asyncio.Event()), 20)

    assert "530" in str(caught.value)
    assert "REMOTE_STORAGE_PASSWORD" in str(caught.value)
    assert "wrong-password" not in str(caught.value)
    assert await line.depth() == 1  # not taken: the task waits for a node that can fetch it


async def test_a_wrong_password_fails_a_transfer_without_retries(
    ftp_server: FtpServer, tmp_path: Path
) -> None:
    """What a task meets if the password changes while the node runs."""
    address = FtpAddress(ftp_server.host, ftp_server.port, ftp_server.username, "wrong-password")
    storage = FtpStorage(address, connections=1, retry=RetryPolicy(retries=3, first_delay=5))
    try:
        with pytest.raises(StorageRefused, match="530"):
            await asyncio.wait_for(storage.download("/x.zip", tmp_path / "x.zip"), 4)
    finally:
        await storage.close()


async def test_a_server_without_epsv_costs_one_refusal_per_connection(
    ftp_server: FtpServer, names: Names, tmp_path: Path
) -> None:
    address = FtpAddress(ftp_server.host, ftp_server.port, ftp_server.username, ftp_server.password)
    storage = FtpStorage(address, connections=1, retry=RetryPolicy(retries=0))
    remote = f"/{names.prefix}/plain.zip"
    ftp_server.put(remote, b"zip bytes")
    before = ftp_server.handler.commands.copy()
    ftp_server.handler.refuse_epsv = True
    try:
        for n in range(3):
            await storage.download(remote, tmp_path / f"{n}.zip")
            await storage.upload(tmp_path / f"{n}.zip", remote)
    finally:
        ftp_server.handler.refuse_epsv = False
        await storage.close()
    sent = ftp_server.handler.commands - before
    assert (sent["EPSV"], sent["PASV"], sent["RETR"], sent["STOR"]) == (1, 6, 3, 3)
    assert ftp_server.get(remote) == b"zip bytes"


async def test_a_planned_zip_is_uploaded_whole_again_after_a_refusal(
    ftp_server: FtpServer, names: Names, tmp_path: Path
) -> None:
    """A zip made from the downloaded one as it is uploaded (a wrapped submission) is read
    from its start again when the upload is retried."""
    blob = random.Random(5).randbytes(3 << 20)
    source = tmp_path / "task.zip"
    source.write_bytes(zip_bytes({"hw/a.bin": blob, "hw/b.txt": "b"}))
    plan = plan_rewrite(source, ArchiveLimits(), "out.txt", "out.txt", b"pass\n")
    remote = f"/{names.prefix}/planned.zip"
    ftp_server.put(remote, source.read_bytes())  # replaced, as a task's zip is
    address = FtpAddress(ftp_server.host, ftp_server.port, ftp_server.username, ftp_server.password)
    storage = FtpStorage(address, connections=1, retry=RetryPolicy(retries=2, first_delay=0.05))
    ftp_server.handler.transient_store_failures["planned.zip"] = 1
    try:
        await storage.upload(plan, remote)
    finally:
        ftp_server.handler.transient_store_failures.pop("planned.zip")
        await storage.close()

    assert zip_names(ftp_server.get(remote)) == {"a.bin": blob, "b.txt": b"b", "out.txt": b"pass\n"}
    assert ftp_server.get(remote) == plan.read_bytes()
    assert [p.name for p in (ftp_server.root / names.prefix).iterdir()] == ["planned.zip"]


class Recorder:
    """A download's reader that keeps what it was given."""

    def __init__(self) -> None:
        self.starts = 0
        self.data = bytearray()

    def start(self) -> None:
        self.starts += 1
        self.data = bytearray()

    def feed(self, block: bytes | bytearray) -> None:
        self.data += block


async def test_a_download_hands_its_reader_every_byte_in_order_once_per_attempt(
    ftp_server: FtpServer, names: Names, tmp_path: Path
) -> None:
    """A large file is written in a worker thread block by block while the next blocks come
    down; its reader (the zip check) gets each block after it is written, in order, and
    starts again with a retried download."""
    content = random.Random(9).randbytes(5 << 20)
    remote = f"/{names.prefix}/big-{names.prefix}.zip"
    ftp_server.put(remote, content)
    ftp_server.handler.transient_failures[f"big-{names.prefix}.zip"] = 1
    address = FtpAddress(ftp_server.host, ftp_server.port, ftp_server.username, ftp_server.password)
    storage = FtpStorage(address, connections=1, retry=RetryPolicy(retries=2, first_delay=0.05))
    reader = Recorder()
    try:
        await storage.download(remote, tmp_path / "task.zip", reader)
    finally:
        await storage.close()

    assert reader.starts == 2  # the refused attempt, then the one that came down
    assert bytes(reader.data) == content
    assert (tmp_path / "task.zip").read_bytes() == content


class FailingReader(Recorder):
    """Fails on the download's second block, as a full disk fails a write."""

    def feed(self, block: bytes | bytearray) -> None:
        if self.data:
            raise OSError(28, "No space left on device")
        super().feed(block)


async def test_a_write_that_fails_mid_download_fails_the_download_and_nothing_hangs(
    ftp_server: FtpServer, names: Names, tmp_path: Path
) -> None:
    content = random.Random(11).randbytes(6 << 20)
    remote = f"/{names.prefix}/full-disk.zip"
    ftp_server.put(remote, content)
    address = FtpAddress(ftp_server.host, ftp_server.port, ftp_server.username, ftp_server.password)
    storage = FtpStorage(address, connections=1, retry=RetryPolicy(retries=0))
    try:
        with pytest.raises(StorageUnavailable, match="No space left"):
            await asyncio.wait_for(
                storage.download(remote, tmp_path / "a.zip", FailingReader()), 20
            )
        reader = Recorder()  # the next download, on a fresh connection, is whole
        await asyncio.wait_for(storage.download(remote, tmp_path / "b.zip", reader), 20)
    finally:
        await storage.close()
    assert bytes(reader.data) == content
