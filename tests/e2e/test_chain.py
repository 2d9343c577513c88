"""A five-stage chain over five `ulos-py node` processes, each started from its own file in
testing-configurations/, on the sample topology applied by `ulos-py topology apply`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.conftest import Broker, FtpServer
from tests.e2e.conftest import ROOT, StartCli, settings_env
from tests.harness import make_zip, zip_names

pytestmark = pytest.mark.timeout(120)

CONFIGS = ROOT / "testing-configurations"
MESSAGES = ROOT / "testing-messages"


def broker_env(broker: Broker) -> dict[str, str]:
    return {
        "MESSAGE_BROKER_HOST": broker.host,
        "MESSAGE_BROKER_PORT": str(broker.port),
        "MESSAGE_BROKER_USERNAME": broker.username,
        "MESSAGE_BROKER_PASSWORD": broker.password,
    }


async def apply_sample_topology(
    broker: Broker, amqp: aio_pika.abc.AbstractRobustConnection, stage_queues: list[str]
) -> aio_pika.abc.AbstractChannel:
    """`ulos-py topology apply` of the sample file; the stage queues start empty."""
    applied = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "ulos_py", "topology", "apply", str(CONFIGS / "topology.toml")],
        cwd=ROOT,
        env=settings_env(broker_env(broker)),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert applied.returncode == 0, applied.stderr
    channel = await amqp.channel()
    for name in stage_queues:
        await (await channel.get_queue(name)).purge()
    return channel


def sample_node_env(broker: Broker, ftp: FtpServer, tmp_path: Path) -> dict[str, str]:
    """What a node started from a sample configuration file needs to reach the test servers."""
    return settings_env(
        {
            **broker_env(broker),
            "REMOTE_STORAGE_HOST": ftp.host,
            "REMOTE_STORAGE_PORT": str(ftp.port),
            "REMOTE_STORAGE_USERNAME": ftp.username,
            "REMOTE_STORAGE_PASSWORD": ftp.password,
            "ULOS_WORK_DIR": str(tmp_path / "work"),
            "ULOS_LOG_FORMAT": "json",
        }
    )


async def follow(
    connection: aio_pika.abc.AbstractRobustConnection,
    task_ids: set[str],
    ready: asyncio.Event,
    journeys: dict[str, list[tuple[str, str]]],
) -> None:
    """Record (event, detail) per task until each reached lab.* or crashed."""
    channel = await connection.channel()
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind("logs-exchange", "logs")
    await queue.bind("crash-exchange", "crash")
    await queue.bind("processing-exchange", "lab.passed")
    await queue.bind("processing-exchange", "lab.failed")
    ready.set()
    finished: set[str] = set()
    async with queue.iterator(no_ack=True) as messages:
        async for message in messages:
            body: dict[str, Any] = json.loads(message.body)
            task_id = body.get("taskId")
            if task_id not in task_ids:
                continue
            if message.exchange == "processing-exchange":
                journeys[task_id].append(("arrived", message.routing_key or ""))
                finished.add(task_id)
            elif message.exchange == "crash-exchange":
                journeys[task_id].append(("crash", body["error"]["kind"]))
                finished.add(task_id)
            elif body["event"] == "execution_finished":
                journeys[task_id].append((body["stage"]["routingKey"], body["outcome"]))
            if finished == task_ids:
                return


async def test_five_stage_chain(
    broker: Broker, ftp_server: FtpServer, amqp, tmp_path: Path, start_cli: StartCli
) -> None:
    channel = await apply_sample_topology(broker, amqp, [f"testing-{n}" for n in range(1, 6)])
    node_env = sample_node_env(broker, ftp_server, tmp_path)
    nodes = [
        start_cli("node", "--env-file", str(CONFIGS / f"testing-{n}.env"), env=node_env)
        for n in range(1, 6)
    ]

    run = uuid.uuid4().hex[:8]
    bodies = {}
    for scenario in ("chain-pass", "chain-fail", "chain-crash"):
        body = json.loads((MESSAGES / f"{scenario}.json").read_text())
        body["taskId"] = f"{scenario}-{run}"
        body["filePath"] = f"/e2e-{run}/{scenario}.zip"
        ftp_server.put(body["filePath"], make_zip({"main.py": "print(1)\n"}))
        bodies[scenario] = body

    journeys: dict[str, list[tuple[str, str]]] = defaultdict(list)
    ready = asyncio.Event()
    follower = asyncio.create_task(
        follow(amqp, {b["taskId"] for b in bodies.values()}, ready, journeys)
    )
    await ready.wait()
    await asyncio.sleep(1)  # nodes connect
    for body in bodies.values():
        await channel.default_exchange.publish(
            aio_pika.Message(json.dumps(body).encode()), routing_key="testing-1"
        )
    await asyncio.wait_for(follower, 60)

    passes = [(f"testing-{n}", "pass") for n in range(1, 6)]
    assert journeys[f"chain-pass-{run}"] == [*passes, ("arrived", "lab.passed")]
    assert journeys[f"chain-fail-{run}"] == [
        *passes[:2],
        ("testing-3-fail", "fail"),
        ("arrived", "lab.failed"),
    ]
    assert journeys[f"chain-crash-{run}"] == [*passes[:2], ("crash", "execution")]
    assert all(node.poll() is None for node in nodes)
    # every stage's output travelled with the zip
    names = zip_names(ftp_server.get(bodies["chain-pass"]["filePath"]))
    outputs = {n for n in names if n.startswith("output_")}
    assert outputs == {f"output_processing-exchange_testing-{n}.txt" for n in range(1, 6)}
