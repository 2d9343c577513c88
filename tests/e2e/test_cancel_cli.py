"""`ulos-py cancel` against real `ulos-py node --processes 2` processes on two stages: every
worker of every node honours it, wherever the task is (SPEC §8)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.support.cli import ROOT, StartCli, settings_env
from tests.support.harness import Pipeline, make_zip, node_values, pipeline, stage, task
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(120)

STOP_WITHIN = 2.0


@pytest.fixture
async def line(names: Names, amqp):  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


def two_stage_registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(
        '[[route]]\nstage = "slow-*"\nexecutor = "slow"\n\n'
        '[[route]]\nstage = "quick"\nexecutor = "quick"\n\n'
        '[executor.slow]\nkind = "builtin"\nbehaviour = "pass"\ndelay_seconds = 60\n\n'
        '[executor.quick]\nkind = "builtin"\nbehaviour = "pass"\ndelay_seconds = 0\n'
    )
    return path


def node_env(
    names: Names, broker: Broker, ftp: FtpServer, tmp_path: Path, queue: str, node_id: str
) -> dict[str, str]:
    work = tmp_path / f"work-{node_id}"
    work.mkdir()
    return settings_env(
        node_values(
            names,
            broker,
            ftp,
            work,
            MESSAGE_BROKER_PREFETCH_COUNT=1,
            MESSAGE_BROKER_CONSUMPTION_QUEUE=queue,
            ULOS_EXECUTORS_FILE=two_stage_registry(tmp_path),
            ULOS_NODE_ID=node_id,
        )
    )


def run_cancel(broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    return run_ulos(broker, "cancel", *args)


def run_ulos(broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    env = settings_env(
        {
            "MESSAGE_BROKER_HOST": broker.host,
            "MESSAGE_BROKER_PORT": broker.port,
            "MESSAGE_BROKER_USERNAME": broker.username,
            "MESSAGE_BROKER_PASSWORD": broker.password,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "ulos_py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def notices_until(
    line: Pipeline, which: str, count: int, timeout: float = 30
) -> list[dict[str, Any]]:
    return [await line.next_json(which, timeout=timeout) for _ in range(count)]


async def started_on(line: Pipeline, task_ids: set[str], key: str) -> dict[str, str]:
    """taskId → nodeId once each of `task_ids` has started executing stage `key`."""
    started: dict[str, str] = {}
    while set(started) != task_ids:
        notice = await line.next_json("logs", timeout=60)  # the nodes may still be starting
        if (
            notice["event"] == "execution_started"
            and notice["taskId"] in task_ids
            and notice["stage"]["routingKey"] == key
        ):
            started[notice["taskId"]] = notice["nodeId"]
    return started


async def test_every_worker_of_every_stage_honours_a_cancel(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    start_cli: StartCli,
    amqp,  # type: ignore[no-untyped-def]
) -> None:
    second_queue = names.queue("second")
    channel = await amqp.channel()
    second = await channel.declare_queue(second_queue, auto_delete=False)
    await second.bind(names.exchange, "slow-b")
    path = f"/{names.prefix}/s.zip"
    ftp_server.put(path, make_zip({"main.py": "print(1)\n"}))
    first_node = f"{names.prefix}-first"
    second_node = f"{names.prefix}-second"
    for queue, node_id in ((line.input_queue, first_node), (second_queue, second_node)):
        start_cli(
            "node",
            "--processes",
            "2",
            env=node_env(names, broker, ftp_server, tmp_path, queue, node_id),
        )
    try:
        # One task passes stage one and runs on stage two.
        moving = f"{names.prefix}-moving"
        tree = stage(names.exchange, "quick", success=stage(names.exchange, "slow-b"))
        await line.publish(task(moving, path, tree))
        [on_second] = (await started_on(line, {moving}, "slow-b")).values()
        assert on_second.startswith(f"{second_node}/w")

        # Two run on stage one, one in each worker (prefetch 1 each).
        one, two = f"{names.prefix}-one", f"{names.prefix}-two"
        for task_id in (one, two):
            await line.publish(task(task_id, path, stage(names.exchange, "slow-a")))
        running = await started_on(line, {one, two}, "slow-a")
        assert len(set(running.values())) == 2, running  # both workers hold one

        loop = asyncio.get_running_loop()
        began = loop.time()
        done = await asyncio.to_thread(
            run_cancel, broker, one, two, moving, "--reason", "assignment withdrawn"
        )
        assert done.returncode == 0, done.stderr
        sent = loop.time()
        crashes = await notices_until(line, "crashes", 3, timeout=STOP_WITHIN + 2)
        stopped = loop.time()

        # A fourth, cancelled before it is sent at all, is dropped by whichever worker gets it.
        late = f"{names.prefix}-late"
        assert (await asyncio.to_thread(run_cancel, broker, late, "--by", "ta")).returncode == 0
        await channel.default_exchange.publish(
            aio_pika.Message(
                json.dumps(task(late, "/nowhere.zip", stage(names.exchange, "slow-b"))).encode()
            ),
            second_queue,
        )
        [late_crash] = await notices_until(line, "crashes", 1)
    finally:
        await channel.queue_delete(second_queue)
        await channel.close()

    by_task = {c["taskId"]: c for c in crashes}
    assert set(by_task) == {one, two, moving}
    assert stopped - sent < STOP_WITHIN, (stopped - sent, sent - began)
    assert {by_task[t]["nodeId"] for t in (one, two)} == set(running.values())
    assert by_task[moving]["nodeId"] == on_second
    for crash in crashes:
        assert crash["error"]["kind"] == "cancelled"
        assert crash["error"]["reason"] == "assignment withdrawn"
        assert "@" in crash["error"]["cancelledBy"]  # user@host of the operator
    assert late_crash["taskId"] == late
    assert late_crash["error"]["cancelledBy"] == "ta"
    assert line.empty("next")


def test_cancel_says_which_were_sent(broker: Broker, names: Names) -> None:
    done = run_cancel(broker, f"{names.prefix}-a", f"{names.prefix}-b", "--reason", "x")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"{names.prefix}-a: cancel sent",
        f"{names.prefix}-b: cancel sent",
    ]


def test_cancel_without_the_exchange_fails_in_one_line(
    broker: Broker, names: Names, tmp_path: Path
) -> None:
    env_file = tmp_path / "cancel.env"
    env_file.write_text(f"export ULOS_CANCEL_EXCHANGE={names.prefix}-missing\n")
    done = run_cancel(broker, f"{names.prefix}-a", "--env-file", str(env_file))
    assert done.returncode == 2
    assert "ULOS_CANCEL_EXCHANGE" in done.stderr and "does not exist" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr


async def test_topology_apply_declares_the_stream_with_the_retention_and_cancel_reaches_it(
    broker: Broker, names: Names, tmp_path: Path, amqp: Any
) -> None:
    exchange, stream = f"{names.prefix}.cancel", f"{names.prefix}.cancel-stream"
    topology = tmp_path / "topology.toml"
    topology.write_text(
        f'[[exchange]]\nname = "{exchange}"\ntype = "fanout"\n\n'
        f'[[queue]]\nname = "{stream}"\ntype = "stream"\n'
        f'bind = [{{ exchange = "{exchange}", routing_key = "" }}]\n'
    )
    env_file = tmp_path / "cancel.env"
    env_file.write_text(
        f"export ULOS_CANCEL_RETENTION=2h\nexport ULOS_CANCEL_EXCHANGE={exchange}\n"
    )
    applied = await asyncio.to_thread(
        run_ulos, broker, "topology", "apply", str(topology), "--env-file", str(env_file)
    )
    assert applied.returncode == 0, applied.stderr
    sent = await asyncio.to_thread(
        run_cancel, broker, f"{names.prefix}-x", "--reason", "why", "--env-file", str(env_file)
    )
    assert sent.returncode == 0, sent.stderr

    channel = await amqp.channel()
    try:
        # The same arguments again are accepted: the stream keeps 2 h (7200 s).
        queue = await channel.declare_queue(
            stream, durable=True, arguments={"x-queue-type": "stream", "x-max-age": "7200s"}
        )
        await channel.set_qos(prefetch_count=10)
        bodies: asyncio.Queue[bytes] = asyncio.Queue()

        async def take(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await bodies.put(message.body)
            await message.ack()

        await queue.consume(take, arguments={"x-stream-offset": "first"})
        body = json.loads(await asyncio.wait_for(bodies.get(), 10))
        await channel.queue_delete(stream)
        await channel.exchange_delete(exchange)
    finally:
        await channel.close()
    assert body["taskId"] == f"{names.prefix}-x"
    assert body["reason"] == "why"
    assert body["cancelledBy"]
    assert body["cancelledAt"].endswith("Z")
