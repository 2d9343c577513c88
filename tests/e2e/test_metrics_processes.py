"""`ulos-py node` with ULOS_METRICS_PORT: each worker process serves its own metrics on
port P + i - 1, and a port that cannot be served stops the node with one line."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.cli import ROOT, StartCli, settings_env
from tests.support.harness import Pipeline, node_values, pipeline
from tests.support.node_processes import arrivals, node_env, publish_tasks
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def line(names: Names, amqp):  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


def free_ports(count: int) -> int:
    """The first of `count` consecutive ports nobody listens on."""
    while True:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if first + count - 1 > 65535:
            continue
        try:
            for port in range(first, first + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return first


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read().decode()


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    return [
        (s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


async def tasks_done(*ports: int) -> float:
    """Tasks the workers on these ports finished, added up as Prometheus would."""
    done = 0.0
    for port in ports:
        status, text = await asyncio.to_thread(get, port, "/metrics")
        assert status == 200
        done += sum(value for _, value in samples(text, "ulos_tasks_total"))
    return done


async def until_healthy(port: int, timeout: float = 30) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            status, body = await asyncio.to_thread(get, port, "/healthz")
            if status == 200:
                answer: dict[str, Any] = json.loads(body)
                return answer
        except urllib.error.URLError:
            pass  # the worker is still starting
        assert asyncio.get_running_loop().time() < deadline, f"port {port} never healthy"
        await asyncio.sleep(0.2)


async def test_each_worker_serves_its_own_metrics_port(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    tmp_path: Path,
    start_cli: StartCli,
) -> None:
    port = free_ports(2)
    env = node_env(names, broker, ftp_server, tmp_path, 0.2, ULOS_METRICS_PORT=port)
    node = start_cli("node", "--processes", "2", env=env)
    first, second = await until_healthy(port), await until_healthy(port + 1)
    ids = await publish_tasks(line, names, ftp_server, 8)
    await arrivals(line, len(ids))

    # a task is counted when acked, just after its forward arrived
    deadline = asyncio.get_running_loop().time() + 10
    while (done := await tasks_done(port, port + 1)) < len(ids):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    assert done == len(ids)  # every task counted once, by the worker that ran it
    assert first["nodeId"].startswith(f"{names.prefix}-node/w1:")
    assert second["nodeId"].startswith(f"{names.prefix}-node/w2:")
    assert node.poll() is None


def test_a_metrics_port_in_use_stops_the_node_with_one_line(
    names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        values = node_values(
            names, broker, ftp_server, tmp_path / "work", ULOS_METRICS_PORT=port, ULOS_PROCESSES=1
        )
        done = subprocess.run(
            [sys.executable, "-m", "ulos_py", "node"],
            cwd=ROOT,
            env=settings_env(values),
            capture_output=True,
            text=True,
            timeout=60,
        )

    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert "configuration error: ULOS_METRICS_PORT: cannot serve metrics on 127.0.0.1" in line
