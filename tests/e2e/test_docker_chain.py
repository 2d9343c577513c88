"""A lab's two-stage chain, check → grade, over two `ulos-py node` processes started from
their files in testing-configurations/, running the shipped docker executors on the
shipped example submissions."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
import zipfile
from collections import defaultdict
from pathlib import Path

import aio_pika
import pytest

from tests.support.cli import ROOT, StartCli
from tests.support.docker_probe import zip_folder
from tests.support.sample_chain import apply_sample_topology, follow, sample_node_env
from tests.support.services import Broker, Engine, FtpServer

pytestmark = [pytest.mark.timeout(180), pytest.mark.usefixtures("executor_images")]

CONFIGS = ROOT / "testing-configurations"
MESSAGES = ROOT / "testing-messages"
EXAMPLES = ROOT / "executors"

SCENARIOS = {
    "check-grade-pass": "pytest-grader/examples/pass-all",
    "check-grade-fail-grade": "pytest-grader/examples/fail-some-tests",
    "check-grade-fail-check": "python-check/examples/fail-syntax-error",
}


async def test_check_then_grade(
    broker: Broker,
    ftp_server: FtpServer,
    docker_engine: Engine,
    amqp,  # type: ignore[no-untyped-def]
    tmp_path: Path,
    start_cli: StartCli,
) -> None:
    channel = await apply_sample_topology(broker, amqp, ["python-check", "pytest-grader"])
    run = uuid.uuid4().hex[:8]
    node_env = sample_node_env(broker, ftp_server, tmp_path)
    nodes = {
        role: start_cli(
            "node",
            "--env-file",
            str(CONFIGS / f"{role}.env"),
            env={**node_env, "ULOS_NODE_ID": f"{role}-{run}"},
        )
        for role in ("python-check", "pytest-grader")
    }

    bodies = {}
    for scenario, example in SCENARIOS.items():
        body = json.loads((MESSAGES / f"{scenario}.json").read_text())
        body["taskId"] = f"{scenario}-{run}"
        body["filePath"] = f"/e2e-{run}/{scenario}.zip"
        ftp_server.put(body["filePath"], zip_folder(EXAMPLES / example))
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
            aio_pika.Message(json.dumps(body).encode()), routing_key="python-check"
        )
    await asyncio.wait_for(follower, 120)

    assert journeys[f"check-grade-pass-{run}"] == [
        ("python-check", "pass"),
        ("pytest-grader", "pass"),
        ("arrived", "lab.passed"),
    ]
    assert journeys[f"check-grade-fail-grade-{run}"] == [
        ("python-check", "pass"),
        ("pytest-grader", "fail"),
        ("arrived", "lab.failed"),
    ]
    assert journeys[f"check-grade-fail-check-{run}"] == [
        ("python-check", "fail"),
        ("arrived", "lab.failed"),
    ]
    assert all(node.poll() is None for node in nodes.values())
    for role in nodes:
        assert docker_engine.containers_of(f"{role}-{run}") == []

    # Both stages' outputs and results travelled with the zip.
    graded = ftp_server.get(bodies["check-grade-fail-grade"]["filePath"])
    with zipfile.ZipFile(io.BytesIO(graded)) as zf:
        names = set(zf.namelist())
        summary = zf.read("results/summary.txt").decode()
    assert {
        "output_processing-exchange_python-check.txt",
        "output_processing-exchange_pytest-grader.txt",
        "results/junit.xml",
        "results/check-report.txt",
    } <= names
    assert "failed" in summary.lower()
