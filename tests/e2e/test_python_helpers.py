"""The scripts of python-helpers/ as a backend developer runs them: subprocesses against the
real RabbitMQ and FTP server, with a real `ulos-py node` process doing the work."""

from __future__ import annotations

import ast
import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import IO

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.support.cli import ROOT, StartCli, settings_env
from tests.support.harness import (
    Pipeline,
    close_connection_named,
    make_zip,
    node_values,
    pipeline,
    zip_names,
)
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(90)

HELPERS = ROOT / "python-helpers"
SCRIPTS = ["upload_submission.py", "publish_task.py", "follow_notices.py", "download_results.py"]
StartHelper = Callable[..., "Running"]


def run_helper(script: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HELPERS / script), *args],
        cwd=HELPERS,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Running:
    """A helper running in the background, its output going to files we can poll."""

    def __init__(self, script: str, args: tuple[str, ...], env: dict[str, str], out: Path) -> None:
        self.stdout_path = out.with_suffix(".out")
        self.stderr_path = out.with_suffix(".err")
        self._files: list[IO[str]] = [self.stdout_path.open("w"), self.stderr_path.open("w")]
        self.process = subprocess.Popen(
            [sys.executable, str(HELPERS / script), *args],
            cwd=HELPERS,
            env=env,
            stdout=self._files[0],
            stderr=self._files[1],
            text=True,
        )

    @property
    def stdout(self) -> str:
        return self.stdout_path.read_text()

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    async def wait_for_stderr(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.stderr:
            assert self.process.poll() is None, f"exited early: {self.stderr}"
            assert time.monotonic() < deadline, f"no {text!r} on stderr: {self.stderr}"
            await asyncio.sleep(0.05)

    async def exit_code(self, timeout: float = 60) -> int:
        return await asyncio.to_thread(self.process.wait, timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        for file in self._files:
            file.close()


@pytest.fixture
def start_helper(tmp_path: Path) -> Iterator[StartHelper]:
    started: list[Running] = []

    def start(script: str, *args: str, env: dict[str, str]) -> Running:
        running = Running(script, args, env, tmp_path / f"helper-{len(started)}")
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


@pytest.fixture
async def line(names: Names, amqp: AbstractRobustConnection) -> AsyncIterator[Pipeline]:
    """The test's exchanges and queues; the node's input queue serves the built-in stages."""
    async with pipeline(names, amqp) as created:
        stage_queue = await created.channel.get_queue(created.input_queue)
        for key in ("skip", "crash"):
            await stage_queue.bind(names.exchange, key)
        yield created


@pytest.fixture
def env(names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path) -> dict[str, str]:
    """The environment of a node, which the helpers read too."""
    return settings_env(node_values(names, broker, ftp_server, tmp_path / "work"))


def events_of(lines: list[str]) -> list[str]:
    """The event column of follow_notices.py's one-line output."""
    return [line.split("  ")[3] for line in lines]


async def test_upload_publish_follow_download(
    names: Names,
    ftp_server: FtpServer,
    tmp_path: Path,
    line: Pipeline,
    env: dict[str, str],
    start_cli: StartCli,
    start_helper: StartHelper,
    amqp: AbstractRobustConnection,
) -> None:
    submission = tmp_path / "submission"
    (submission / "src").mkdir(parents=True)
    (submission / "main.py").write_text("print('hello')\n")
    (submission / "src" / "util.py").write_text("X = 1\n")
    remote = f"/{names.prefix}/lab3/sub-1.zip"  # the directories do not exist yet
    task_id = f"{names.prefix}-sub-1"

    uploaded = await asyncio.to_thread(
        run_helper, "upload_submission.py", str(submission), remote, env=env
    )
    assert uploaded.returncode == 0, uploaded.stderr
    assert zip_names(ftp_server.get(remote)) == {"main.py", "src/util.py"}

    start_cli("node", env=env)
    # Two followers: one-line output from a temporary queue, JSON from a durable one.
    durable = names.queue("backend-notices")
    follow = ["--task", task_id, "--until-done", "--timeout", "60"]
    lines = start_helper("follow_notices.py", *follow, env=env)
    as_json = start_helper("follow_notices.py", *follow, "--json", "--queue", durable, env=env)
    await lines.wait_for_stderr("following")
    await as_json.wait_for_stderr("following")

    published = await asyncio.to_thread(
        run_helper,
        "publish_task.py",
        *("--task-id", task_id, "--owner", "student-7", "--file-path", remote),
        *("--exchange", names.exchange, "--stage", "skip"),
        *("--on-success", "next-key", "--on-failure", "failed-key"),
        env=env,
    )
    assert published.returncode == 0, published.stderr
    assert "confirmed" in published.stdout

    assert await lines.exit_code() == 0, lines.stderr
    assert await as_json.exit_code() == 0, as_json.stderr
    printed = lines.stdout.splitlines()
    all_events = {
        "received",
        "downloaded",
        "execution_started",
        "execution_finished",
        "uploaded",
        "forwarded",
        "acked",
    }
    assert set(events_of(printed)) == all_events
    assert events_of(printed)[-1] == "acked"  # it waited for the node to settle the task
    assert all(f"{task_id}  skip  " in printed_line for printed_line in printed)
    assert any(f"to {names.exchange}/next-key" in printed_line for printed_line in printed)
    notices = [json.loads(raw) for raw in as_json.stdout.splitlines()]
    assert {notice["event"] for notice in notices} == all_events
    assert {notice["taskOwnerId"] for notice in notices} == {"student-7"}

    # The task went on to the success branch as the backend will receive it.
    forwarded = await line.next_message("next")
    assert json.loads(forwarded.body)["taskId"] == task_id
    assert forwarded.correlation_id == task_id
    assert forwarded.message_id

    extract = tmp_path / "results"
    downloaded = await asyncio.to_thread(
        run_helper,
        "download_results.py",
        *(remote, "--show", "output_*", "--extract", str(extract)),
        env=env,
    )
    assert downloaded.returncode == 0, downloaded.stderr
    output = f"output_{names.exchange}_skip.txt"
    assert output in downloaded.stdout
    assert f"--- {output}" in downloaded.stdout  # --show printed it
    assert (extract / output).is_file()
    assert (extract / "src" / "util.py").read_text() == "X = 1\n"

    # The named queue outlives the follower, for its next run to read, and is durable
    # (declaring it durable again would fail otherwise); every notice in it was acked.
    channel = await amqp.channel()
    kept = await channel.declare_queue(durable, durable=True)
    assert kept.declaration_result.message_count == 0
    await channel.queue_delete(durable)
    await channel.close()


async def test_until_done_exits_3_on_a_crash(
    names: Names,
    ftp_server: FtpServer,
    line: Pipeline,
    env: dict[str, str],
    start_cli: StartCli,
    start_helper: StartHelper,
) -> None:
    remote = f"/{names.prefix}/crash.zip"
    ftp_server.put(remote, make_zip({"main.py": "print(1)\n"}))
    task_id = f"{names.prefix}-crash"
    start_cli("node", env=env)
    follower = start_helper(
        "follow_notices.py", "--task", task_id, "--until-done", "--timeout", "60", env=env
    )
    await follower.wait_for_stderr("following")
    message = {
        "taskId": task_id,
        "taskOwnerId": "student-7",
        "filePath": remote,
        "timeout": 10,
        "routingTree": {
            "exchange": names.exchange,
            "routingKey": "crash",
            "successRoutingDecision": {"exchange": names.exchange, "routingKey": "next-key"},
        },
    }
    published = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, str(HELPERS / "publish_task.py"), "-"],  # the message on stdin
        input=json.dumps(message),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert published.returncode == 0, published.stderr

    assert await follower.exit_code() == 3, follower.stderr
    events = events_of(follower.stdout.splitlines())
    assert "CRASH:execution" in events  # the notice from the crash exchange
    assert {"crashed", "rejected"} <= set(events)


async def test_unroutable_or_missing_target_is_one_line(
    names: Names, line: Pipeline, env: dict[str, str]
) -> None:
    task = ["--task-id", "t-1", "--file-path", "/x/t-1.zip"]
    nobody = await asyncio.to_thread(
        run_helper,
        "publish_task.py",
        *task,
        *("--exchange", names.exchange, "--stage", "no-queue-is-bound-to-this"),
        env=env,
    )
    missing = await asyncio.to_thread(
        run_helper,
        "publish_task.py",
        *task,
        *("--exchange", f"{names.prefix}.no-such-exchange", "--stage", "skip"),
        env=env,
    )
    assert nobody.returncode == 1
    assert nobody.stderr.count("\n") == 1
    assert "unroutable" in nobody.stderr
    assert "no-queue-is-bound-to-this" in nobody.stderr
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1
    assert "does not exist" in missing.stderr
    assert await line.depth() == 0  # nothing reached the stage queue


@pytest.mark.parametrize(
    ("script", "args", "expected"),
    [
        ("publish_task.py", ["--task-id", "t", "--file-path", "/t.zip"], "cannot reach the broker"),
        ("follow_notices.py", [], "cannot reach the broker"),
        ("upload_submission.py", [".", "/t.zip"], "cannot reach the FTP server"),
        ("download_results.py", ["/t.zip"], "cannot reach the FTP server"),
    ],
)
def test_unreachable_service_is_one_line(
    script: str, args: list[str], expected: str, env: dict[str, str]
) -> None:
    nothing_listens = {**env, "MESSAGE_BROKER_PORT": "1", "REMOTE_STORAGE_PORT": "1"}
    stage = ["--exchange", "e", "--stage", "skip"] if script == "publish_task.py" else []
    result = run_helper(script, *args, *stage, env=nothing_listens)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert expected in result.stderr
    assert ":1:" in result.stderr  # names the address it tried
    assert "Traceback" not in result.stderr


def test_missing_results_file_is_one_line(names: Names, env: dict[str, str]) -> None:
    result = run_helper("download_results.py", f"/{names.prefix}/none.zip", env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "550" in result.stderr


async def test_follower_reconnects_after_connection_loss(
    names: Names,
    line: Pipeline,
    env: dict[str, str],
    start_helper: StartHelper,
    amqp: AbstractRobustConnection,
) -> None:
    follower = start_helper("follow_notices.py", "--json", env=env)
    await follower.wait_for_stderr("following")
    name = f"follow_notices.py pid {follower.process.pid}"
    assert await asyncio.to_thread(close_connection_named, name) == 1
    await follower.wait_for_stderr("reconnected", timeout=30)

    channel = await amqp.channel()
    logs = await channel.get_exchange(names.logs_exchange)
    notice = {"taskId": "t-after", "event": "received", "logMessage": "after the reconnect"}
    await logs.publish(aio_pika.Message(json.dumps(notice).encode()), "logs")
    await channel.close()
    deadline = time.monotonic() + 15
    while "t-after" not in follower.stdout:
        assert time.monotonic() < deadline, follower.stderr
        await asyncio.sleep(0.05)

    follower.process.send_signal(signal.SIGINT)
    assert await follower.exit_code() == 130
    assert "Traceback" not in follower.stderr
    assert "lost the broker" in follower.stderr


@pytest.mark.parametrize("script", SCRIPTS)
def test_standalone_with_help(script: str) -> None:
    """Only the standard library, aio-pika and aioftp: a developer copies the file alone."""
    tree = ast.parse((HELPERS / script).read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert imported - set(sys.stdlib_module_names) <= {"aio_pika", "aioftp"}
    helped = run_helper(script, "--help", env=settings_env({}))
    assert helped.returncode == 0
    assert "usage:" in helped.stdout
