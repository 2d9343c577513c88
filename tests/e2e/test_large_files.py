"""Large zips stream: a node's peak memory does not grow with the zip, and the archive
limits still hold. A real `ulos-py node` process, its memory read from /proc."""

from __future__ import annotations

import asyncio
import io
import os
import time
import zipfile
from pathlib import Path

import pytest

from tests.support.cli import StartCli, settings_env
from tests.support.harness import Pipeline, make_zip, node_values, pipeline, stage, task
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(180)

BIG = 100 << 20


@pytest.fixture
async def line(names: Names, amqp):  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


def big_zip(wrapped: bool = False) -> bytes:
    """About 100 MB: four incompressible files, as a zip tool stores them; `wrapped`: all in
    one folder, which the node strips (so the uploaded zip is made anew from the entries)."""
    top = "data" if wrapped else ""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for n in range(4):
            zf.writestr(f"data/part-{n}.bin", os.urandom(BIG // 4))
        zf.writestr(f"{top}/README.md".lstrip("/"), "measurements\n")
    return buffer.getvalue()


def peak_rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


@pytest.mark.parametrize("wrapped", [False, True], ids=["added-to", "made-anew"])
async def test_peak_memory_does_not_grow_with_a_100_mb_zip(
    wrapped: bool,
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    start_cli: StartCli,
) -> None:
    env = settings_env(node_values(names, broker, ftp_server, tmp_path / "work", ULOS_PROCESSES=1))
    node = start_cli("node", env=env)
    tree = stage(names.exchange, "skip", success=stage(names.exchange, "next-key"))
    small, big = f"/{names.prefix}/small.zip", f"/{names.prefix}/big.zip"
    ftp_server.put(small, make_zip({"main.py": "print(1)\n" * 1000}))
    ftp_server.put(big, big_zip(wrapped))

    await line.publish(task("small", small, tree))
    assert (await line.next_json("next", timeout=30))["taskId"] == "small"
    after_small = peak_rss_mib(node.pid)
    await line.publish(task("big", big, tree, timeout=120))
    assert (await line.next_json("next", timeout=120))["taskId"] == "big"
    after_big = peak_rss_mib(node.pid)

    with zipfile.ZipFile(io.BytesIO(ftp_server.get(big))) as zf:
        sizes = {info.filename: info.file_size for info in zf.infolist()}
    part = "part-3.bin" if wrapped else "data/part-3.bin"
    assert sizes[part] == BIG // 4  # the results really went round
    print(f"node peak RSS: {after_small:.1f} MiB after 10 KB, {after_big:.1f} MiB after 100 MB")
    assert after_big - after_small < 50, (after_small, after_big)


async def test_a_zip_over_the_size_limit_is_refused(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    start_cli: StartCli,
) -> None:
    values = node_values(
        names,
        broker,
        ftp_server,
        tmp_path / "work",
        ULOS_PROCESSES=1,
        ULOS_ARCHIVE_MAX_BYTES=50 << 20,
    )
    start_cli("node", env=settings_env(values))
    path = f"/{names.prefix}/big.zip"
    ftp_server.put(path, big_zip())

    await line.publish(task("too-big", path, stage(names.exchange, "skip")))
    crash = await line.next_json("crashes", timeout=60)

    assert crash["error"]["kind"] == "archive"
    assert "limit" in crash["error"]["detail"]
    # a large workspace is removed in the background once the delivery is settled
    await until_empty(tmp_path / "work", seconds=10)


async def until_empty(folder: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while left := list(folder.iterdir()):
        assert time.monotonic() < deadline, f"left behind after {seconds:g} s: {left}"
        await asyncio.sleep(0.1)
