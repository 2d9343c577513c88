"""The `ulos-py node` process: configuration errors, JSON logs, SIGTERM, reconnection."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT, StartCli, settings_env
from tests.support.harness import (
    Pipeline,
    close_connection_named,
    make_zip,
    node_values,
    pipeline,
    stage,
    task,
)
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def line(names: Names, amqp):  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


def env_for(names: Names, broker: Broker, ftp: FtpServer, tmp_path: Path, **extra: object) -> dict:
    return settings_env(node_values(names, broker, ftp, tmp_path / "work", **extra))


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ulos_py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env_file = tmp_path / "node.env"
    env_file.write_text(
        "export MESSAGE_BROKER_PORT=not-a-port\nexport MESSAGE_BROKER_CONSUMPTION_QUEUE=q\n"
    )
    result = run_cli("node", "--env-file", str(env_file), env=settings_env({}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "MESSAGE_BROKER_PORT" in lines[0]
    assert "Traceback" not in result.stderr


def test_missing_env_file_is_one_line(tmp_path: Path) -> None:
    result = run_cli("node", "--env-file", str(tmp_path / "nope.env"), env=settings_env({}))
    assert result.returncode == 2
    assert "no such file" in result.stderr
    assert "Traceback" not in result.stderr


async def test_missing_queue_is_one_line(
    names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path, line: Pipeline
) -> None:
    env = env_for(
        names,
        broker,
        ftp_server,
        tmp_path,
        MESSAGE_BROKER_CONSUMPTION_QUEUE=f"{names.prefix}.no-such-queue",
    )
    result = await asyncio.to_thread(run_cli, "node", env=env)
    assert result.returncode == 2
    assert "no-such-queue" in result.stderr
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


async def test_sigterm_finishes_in_flight_task_and_exits_0(
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    line: Pipeline,
    start_cli: StartCli,
) -> None:
    path = f"/{names.prefix}/sig.zip"
    ftp_server.put(path, make_zip({"a.txt": "x"}))
    node = start_cli("node", env=env_for(names, broker, ftp_server, tmp_path))
    await line.publish(
        task(
            "t-sig", path, stage(names.exchange, "pass", success=stage(names.exchange, "next-key"))
        )
    )
    await line.logs_until("t-sig", "execution_started", timeout=30)
    node.send_signal(signal.SIGTERM)
    forwarded = await line.next_json("next")
    code = await asyncio.to_thread(node.wait, 30)
    assert forwarded["taskId"] == "t-sig"
    assert code == 0
    log_lines = [json.loads(line) for line in node.stderr.read().splitlines() if line.strip()]
    events = [entry["event"] for entry in log_lines]  # JSON, since stderr is not a terminal
    assert "consuming" in events
    assert "stopped" in events


async def test_node_survives_broker_connection_loss(
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    line: Pipeline,
    start_cli: StartCli,
) -> None:
    path = f"/{names.prefix}/rc.zip"
    ftp_server.put(path, make_zip({"a.txt": "x"}))
    tree = stage(names.exchange, "skip", success=stage(names.exchange, "next-key"))
    node = start_cli(
        "node", env=env_for(names, broker, ftp_server, tmp_path, ULOS_NODE_ID=f"{names.prefix}-rc")
    )
    await line.publish(task("t-before", path, tree))
    assert (await line.next_json("next", timeout=30))["taskId"] == "t-before"
    closed = await asyncio.to_thread(close_connection_named, f"ulos-py node {names.prefix}-rc")
    assert closed == 1
    await asyncio.sleep(4)  # the node reconnects with back-off (2 s interval)
    await line.publish(task("t-after", path, tree))
    assert (await line.next_json("next", timeout=30))["taskId"] == "t-after"
    assert node.poll() is None
