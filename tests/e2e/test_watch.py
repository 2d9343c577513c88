"""`ulos-py watch` as a process, following the notices of a real node (run in-process on
this test's own exchanges) through the real broker."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.support.cli import ROOT, StartCli, settings_env
from tests.support.harness import (
    Pipeline,
    close_connection_named,
    make_zip,
    node_settings,
    node_values,
    pipeline,
    running_node,
    stage,
    task,
)
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(90)

PASSING = [
    "received",
    "downloaded",
    "execution_started",
    "execution_finished",
    "uploaded",
    "forwarded",
    "acked",
]
CRASHING = ["received", "downloaded", "execution_started", "crashed", "crashed", "rejected"]


@pytest.fixture
async def line(
    names: Names, amqp: aio_pika.abc.AbstractRobustConnection
) -> AsyncIterator[Pipeline]:
    async with pipeline(names, amqp) as created:
        yield created


def watch_env(names: Names, broker: Broker, ftp: FtpServer, tmp_path: Path) -> dict[str, str]:
    """The very variables a node of this test reads (the watcher ignores the rest)."""
    return settings_env(node_values(names, broker, ftp, tmp_path / "work"))


async def readline(stream: Any, deadline: float) -> str:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError
    text: str = await asyncio.wait_for(asyncio.to_thread(stream.readline), remaining)
    if not text:
        raise EOFError("the watcher closed its output")
    return text.rstrip("\n")


async def started(watcher: subprocess.Popen[str], timeout: float = 20) -> None:
    """Wait until the watcher's queue is bound: notices sent after this reach it."""
    deadline = time.monotonic() + timeout
    line = await readline(watcher.stderr, deadline)
    assert "following" in line, line


async def lines_until(
    watcher: subprocess.Popen[str], done: Callable[[list[str]], bool], timeout: float = 30
) -> list[str]:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while not done(seen):
        seen.append(await readline(watcher.stdout, deadline))
    return seen


def stop(watcher: subprocess.Popen[str], signum: int) -> tuple[int, str, str]:
    """Signal the watcher; its exit status and the rest of its stdout and stderr."""
    watcher.send_signal(signum)
    out, err = watcher.communicate(timeout=20)
    return watcher.returncode, out, err


def events_of(notices: list[dict[str, Any]], task_id: str) -> list[str]:
    return [n["event"] for n in notices if n.get("taskId") == task_id]


def finished(task_id: str, event: str) -> Callable[[list[str]], bool]:
    def check(lines: list[str]) -> bool:
        return any(
            (n := json.loads(line)).get("taskId") == task_id and n["event"] == event
            for line in lines
        )

    return check


def both(*checks: Callable[[list[str]], bool]) -> Callable[[list[str]], bool]:
    return lambda lines: all(check(lines) for check in checks)


async def test_json_lines_carry_every_event_of_each_task_in_order(
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    line: Pipeline,
    start_cli: StartCli,
) -> None:
    path = f"/{names.prefix}/a.zip"
    ftp_server.put(path, make_zip({"main.py": "print(1)\n"}))
    watcher = start_cli("watch", "--json", env=watch_env(names, broker, ftp_server, tmp_path))
    await started(watcher)
    passing, crashing = f"{names.prefix}-pass", f"{names.prefix}-crash"
    settings = node_settings(names, broker, ftp_server, tmp_path / "work")
    async with running_node(settings):
        await line.publish(
            task(passing, path, stage(names.exchange, "skip", stage(names.exchange, "next-key")))
        )
        await line.publish(task(crashing, path, stage(names.exchange, "crash")))
        seen = await lines_until(
            watcher, both(finished(passing, "acked"), finished(crashing, "rejected"))
        )
    status, rest, err = stop(watcher, signal.SIGTERM)

    notices = [json.loads(text) for text in [*seen, *rest.splitlines()]]
    assert events_of(notices, passing) == PASSING
    assert events_of(notices, crashing) == CRASHING
    forward = next(n for n in notices if n.get("taskId") == passing and n["event"] == "forwarded")
    assert forward["target"] == {"exchange": names.exchange, "routingKey": "next-key"}
    assert forward["stage"] == {"exchange": names.exchange, "routingKey": "skip"}
    crash = next(n for n in notices if n.get("taskId") == crashing and n["event"] == "crashed")
    assert crash["error"]["kind"] == "execution"
    assert all(line == json.dumps(json.loads(line), separators=(",", ":")) for line in seen)
    assert status == 0, err
    assert "2 tasks seen" in err  # the table goes to stderr: stdout stays JSON
    assert "Traceback" not in err


async def test_task_filter_shows_only_the_tasks_asked_for(
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    line: Pipeline,
    start_cli: StartCli,
) -> None:
    path = f"/{names.prefix}/a.zip"
    ftp_server.put(path, make_zip({"main.py": "print(1)\n"}))
    wanted = [f"{names.prefix}-a", f"{names.prefix}-c"]
    other = f"{names.prefix}-b"
    watcher = start_cli(
        "watch",
        "--json",
        "--task",
        wanted[0],
        "--task",
        wanted[1],
        env=watch_env(names, broker, ftp_server, tmp_path),
    )
    await started(watcher)
    tree = stage(names.exchange, "skip", stage(names.exchange, "next-key"))
    async with running_node(node_settings(names, broker, ftp_server, tmp_path / "work")):
        # The other task's notices are all in the watcher's queue before the wanted ones.
        await line.publish(task(other, path, tree))
        await line.logs_until(other, "acked")
        for task_id in wanted:
            await line.publish(task(task_id, path, tree))
        seen = await lines_until(watcher, both(*(finished(t, "acked") for t in wanted)))
    stop(watcher, signal.SIGTERM)

    notices = [json.loads(text) for text in seen]
    assert {n["taskId"] for n in notices} == set(wanted)
    for task_id in wanted:
        assert events_of(notices, task_id) == PASSING


async def test_the_view_shows_stages_passed_and_the_crash_reason_then_a_summary(
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    line: Pipeline,
    start_cli: StartCli,
) -> None:
    path = f"/{names.prefix}/a.zip"
    ftp_server.put(path, make_zip({"main.py": "print(1)\n"}))
    # The one node serves both stages: the `crash` stage comes back to its queue.
    await (await line.channel.get_queue(line.input_queue)).bind(names.exchange, "crash")
    watcher = start_cli("watch", env=watch_env(names, broker, ftp_server, tmp_path))
    await started(watcher)
    logs = await line.channel.get_exchange(names.logs_exchange)
    await logs.publish(aio_pika.Message(b"\x00 not a notice"), "logs")
    task_id = f"{names.prefix}-two-stages"
    tree = stage(names.exchange, "skip", stage(names.exchange, "crash"))
    async with running_node(node_settings(names, broker, ftp_server, tmp_path / "work")):
        await line.publish(task(task_id, path, tree))
        seen = await lines_until(watcher, lambda lines: "crashed at" in (lines or [""])[-1])
    status, rest, err = stop(watcher, signal.SIGINT)

    assert "(not a JSON notice on" in seen[0]
    assert "not a notice" in seen[0]
    mine = [text for text in seen if f" {task_id} " in text]
    assert mine[0].endswith("now skip (received)")
    # The node serves both stages: the crash stage's `received` may be published before the
    # skip stage's `forwarded` (two of its tasks, one channel), and the view shows what it saw.
    moved_on = ("passed: skip ✓ | forwarded to crash", "passed: skip ✓ | now crash (received)")
    assert any(text.endswith(moved_on) for text in mine)
    assert any(text.endswith("passed: skip ✓ | now crash (execution_started)") for text in mine)
    assert "passed: skip ✓ | crashed at crash: execution: " in mine[-1]
    assert "crashed on purpose" in mine[-1]

    assert status == 0, err
    assert "Traceback" not in err
    summary = rest.splitlines()
    assert "1 task seen: 1 crashed, 1 notice(s) not JSON" in summary
    header = next(
        i for i, text in enumerate(summary) if text.split() == ["TASK", "PASSED", "STATE"]
    )
    row = summary[header + 1]
    assert row.startswith(task_id)
    assert "skip ✓" in row
    assert "crashed at crash: execution:" in row


async def test_after_a_lost_connection_it_says_so_and_follows_again(
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    line: Pipeline,
    start_cli: StartCli,
) -> None:
    path = f"/{names.prefix}/a.zip"
    ftp_server.put(path, make_zip({"main.py": "print(1)\n"}))
    watcher = start_cli("watch", "--json", env=watch_env(names, broker, ftp_server, tmp_path))
    await started(watcher)
    name = f"ulos-py watch {socket.gethostname()}.{watcher.pid}"
    assert await asyncio.to_thread(close_connection_named, name) == 1
    deadline = time.monotonic() + 30
    assert "connection lost" in await readline(watcher.stderr, deadline)
    assert "reconnected" in await readline(watcher.stderr, deadline)
    task_id = f"{names.prefix}-after"
    tree = stage(names.exchange, "skip", stage(names.exchange, "next-key"))
    async with running_node(node_settings(names, broker, ftp_server, tmp_path / "work")):
        await line.publish(task(task_id, path, tree))
        seen = await lines_until(watcher, finished(task_id, "acked"))
    status, _, err = stop(watcher, signal.SIGTERM)
    assert events_of([json.loads(text) for text in seen], task_id) == PASSING
    assert status == 0, err
    assert "Traceback" not in err


def run_watch(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ulos_py", "watch"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_missing_exchanges_are_one_line_and_exit_1(
    names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    result = await asyncio.to_thread(run_watch, watch_env(names, broker, ftp_server, tmp_path))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert names.logs_exchange in lines[0]
    assert names.crash_exchange in lines[0]
    assert "do not exist" in lines[0]
    assert result.stdout == ""


def test_an_unreachable_broker_is_one_line_and_exit_1(
    names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = watch_env(names, broker, ftp_server, tmp_path)
    env["MESSAGE_BROKER_PORT"] = str(port)
    result = run_watch(env)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "cannot reach the broker" in lines[0]
    assert str(port) in lines[0]
