"""A five-stage chain over five `ulos-py node` processes, each started from its own file in
testing-configurations/, on the sample topology applied by `ulos-py topology apply`."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import defaultdict
from pathlib import Path

import aio_pika
import pytest

from tests.support.cli import ROOT, StartCli
from tests.support.harness import make_zip, zip_names
from tests.support.sample_chain import (
    CONFIGS,
    apply_sample_topology,
    follow,
    sample_node_env,
)
from tests.support.services import Broker, FtpServer

pytestmark = pytest.mark.timeout(120)

MESSAGES = ROOT / "testing-messages"


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
