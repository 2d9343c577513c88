"""The sample deployment (testing-configurations/) on the test broker: its topology
applied, node environments, and a follower of the notices."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika

from tests.support.cli import ROOT, settings_env
from tests.support.services import Broker, FtpServer

CONFIGS = ROOT / "testing-configurations"


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
