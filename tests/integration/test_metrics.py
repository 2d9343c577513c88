"""An in-process node with ULOS_METRICS_PORT, against the real broker and FTP server:
what `/metrics` and `/healthz` say, scraped over HTTP like Prometheus would."""

from __future__ import annotations

import asyncio
import gc
import json
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.harness import (
    Pipeline,
    close_connection_named,
    make_zip,
    node_settings,
    pipeline,
    running_node,
    stage,
    task,
)
from tests.support.ports import free_port, steady_port
from tests.support.relay import DroppingRelay
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(90)

SUBMISSION = {"main.py": "print('hello')\n"}
SLOW_REGISTRY = """
[[route]]
stage = "slow"
executor = "slow"

[executor.slow]
kind = "builtin"
behaviour = "pass"
delay_seconds = 2
"""


@pytest.fixture
async def line(names: Names, amqp) -> Pipeline:  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def submission(names: Names, ftp_server: FtpServer) -> str:
    path = f"/{names.prefix}/alice.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    return path


def branches(names: Names, key: str) -> dict[str, Any]:
    return stage(
        names.exchange,
        key,
        success=stage(names.exchange, "next-key"),
        failure=stage(names.exchange, "failed-key"),
    )


class Scrape:
    """One scrape of `/metrics`, parsed with prometheus-client's own parser."""

    def __init__(self, text: str) -> None:
        self.samples = {
            (s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }

    def __call__(self, name: str, **labels: str) -> float:
        """A sample's value; 0 when the node never touched it."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


async def scrape(port: int) -> Scrape:
    status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    return Scrape(body.decode())


async def health(port: int) -> tuple[int, dict[str, Any]]:
    status, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")
    answer: dict[str, Any] = json.loads(body)
    return status, answer


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15) -> None:
    """Wait until `check` holds (the node settles a moment after its last notice)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.1)


async def settled(line: Pipeline, task_ids: set[str], timeout: float = 20) -> list[dict[str, Any]]:
    """Every log notice until each of these tasks was acked or rejected for good."""
    seen: list[dict[str, Any]] = []
    waiting = set(task_ids)
    while waiting:
        notice = await line.next_json("logs", timeout)
        seen.append(notice)
        if notice["event"] == "acked" or (
            notice["event"] == "rejected" and not notice.get("requeued")
        ):
            waiting.discard(notice.get("taskId"))
    return seen


async def test_outcomes_crash_kinds_and_step_durations_by_stage(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    submission: str,
) -> None:
    port = steady_port()
    settings = node_settings(names, broker, ftp_server, work_dir, ULOS_METRICS_PORT=port)
    async with running_node(settings):
        for task_id, key in (
            ("t-pass", "skip"),
            ("t-fail", "fail"),
            ("t-crash", "crash"),
            ("t-none", "no-such-stage"),
        ):
            await line.publish(task(task_id, submission, branches(names, key)))
        await line.publish({"taskId": "t-bad", "timeout": "soon"})  # breaks the format
        await settled(line, {"t-pass", "t-fail", "t-crash", "t-none", "t-bad"})

        async def idle() -> bool:
            return (await scrape(port))("ulos_tasks_in_flight") == 0

        await eventually(idle)
        metrics = await scrape(port)

    for key in ("skip", "fail", "crash", "no-such-stage"):
        assert metrics("ulos_tasks_received_total", stage=key) == 1
    assert metrics("ulos_tasks_received_total", stage="none") == 0  # never parsed
    assert metrics("ulos_tasks_total", stage="skip", outcome="pass") == 1
    assert metrics("ulos_tasks_total", stage="fail", outcome="fail") == 1
    assert metrics("ulos_tasks_total", stage="crash", outcome="crash") == 1
    assert metrics("ulos_tasks_total", stage="no-such-stage", outcome="crash") == 1
    assert metrics("ulos_tasks_total", stage="none", outcome="crash") == 1
    assert metrics("ulos_tasks_total", stage="skip", outcome="fail") == 0
    assert metrics("ulos_crashes_total", stage="crash", kind="execution") == 1
    assert metrics("ulos_crashes_total", stage="no-such-stage", kind="no_executor") == 1
    assert metrics("ulos_crashes_total", stage="none", kind="malformed") == 1
    assert metrics("ulos_redeliveries_total", stage="skip") == 0

    def count(step: str, key: str) -> float:
        return metrics(f"ulos_{step}_duration_seconds_count", stage=key)

    # which steps each task reached: the crash downloaded, never finished executing
    assert [count("download", k) for k in ("skip", "fail", "crash", "no-such-stage")] == [
        1,
        1,
        1,
        0,
    ]
    for step in ("execution", "upload", "forward"):
        assert [count(step, k) for k in ("skip", "fail", "crash")] == [1, 1, 0]
    # the built-in `fail` takes 1 s, `skip` none
    assert metrics("ulos_execution_duration_seconds_sum", stage="fail") >= 1.0
    assert metrics("ulos_execution_duration_seconds_sum", stage="skip") < 0.5
    assert metrics("ulos_execution_duration_seconds_bucket", stage="fail", le="0.5") == 0
    assert metrics("ulos_execution_duration_seconds_bucket", stage="fail", le="2.5") == 1
    assert metrics("ulos_download_duration_seconds_sum", stage="skip") > 0
    assert metrics("ulos_broker_connected") == 1
    assert metrics("ulos_consuming") == 1
    assert metrics("ulos_broker_connection_losses_total") == 0
    assert metrics("ulos_node_info", node_id=f"{names.prefix}-node", queue=line.input_queue) == 1


async def test_tasks_in_flight_and_a_draining_node_is_not_healthy(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    submission: str,
    tmp_path: Path,
) -> None:
    registry = tmp_path / "registry.toml"
    registry.write_text(SLOW_REGISTRY)
    port = steady_port()
    settings = node_settings(
        names, broker, ftp_server, work_dir, ULOS_METRICS_PORT=port, ULOS_EXECUTORS_FILE=registry
    )
    async with running_node(settings) as stop:
        assert (await scrape(port))("ulos_tasks_in_flight") == 0
        for task_id in ("t-slow-1", "t-slow-2"):
            await line.publish(task(task_id, submission, branches(names, "slow")))
        started: set[str] = set()
        while started != {"t-slow-1", "t-slow-2"}:
            notice = await line.next_json("logs")
            if notice["event"] == "execution_started":
                started.add(notice["taskId"])

        metrics = await scrape(port)
        assert metrics("ulos_tasks_in_flight") == 2
        assert metrics("ulos_execution_duration_seconds_count", stage="slow") == 0
        status, answer = await health(port)
        assert (status, answer["inFlight"], answer["healthy"]) == (200, 2, True)

        await settled(line, {"t-slow-1", "t-slow-2"})

        async def idle() -> bool:
            return (await scrape(port))("ulos_tasks_in_flight") == 0

        await eventually(idle)
        metrics = await scrape(port)
        assert metrics("ulos_tasks_total", stage="slow", outcome="pass") == 2
        assert metrics("ulos_execution_duration_seconds_count", stage="slow") == 2
        assert metrics("ulos_execution_duration_seconds_sum", stage="slow") >= 4.0
        assert metrics("ulos_execution_duration_seconds_bucket", stage="slow", le="1.0") == 0
        assert metrics("ulos_execution_duration_seconds_bucket", stage="slow", le="2.5") == 2

        await line.publish(task("t-slow-3", submission, branches(names, "slow")))
        await line.logs_until("t-slow-3", "execution_started")
        stop.set()  # the node stops taking tasks and lets this one finish: not ready

        async def draining() -> bool:
            return (await health(port))[0] == 503

        await eventually(draining, timeout=1.5)
        status, answer = await health(port)
        assert (answer["connected"], answer["consuming"], answer["inFlight"]) == (True, False, 1)
        assert (await scrape(port))("ulos_consuming") == 0
        await settled(line, {"t-slow-3"})
    # the stopped node no longer listens
    with pytest.raises(urllib.error.URLError):
        await asyncio.to_thread(_get, f"http://127.0.0.1:{port}/healthz")


async def test_crashed_tasks_requeued_on_reject_count_as_redeliveries(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    submission: str,
) -> None:
    port = steady_port()
    settings = node_settings(
        names,
        broker,
        ftp_server,
        work_dir,
        ULOS_METRICS_PORT=port,
        MESSAGE_BROKER_REQUEUE_ON_REJECT=True,
        ULOS_MAX_DELIVERIES=3,
    )
    async with running_node(settings):
        await line.publish(task("t-poison", submission, branches(names, "crash")))
        notices = await settled(line, {"t-poison"})
        metrics = await scrape(port)

    received = [n for n in notices if n["event"] == "received"]
    assert [n["redelivered"] for n in received] == [False, True, True]
    assert metrics("ulos_tasks_received_total", stage="crash") == 3
    assert metrics("ulos_redeliveries_total", stage="crash") == 2
    assert metrics("ulos_crashes_total", stage="crash", kind="execution") == 3
    assert metrics("ulos_tasks_total", stage="crash", outcome="crash") == 3


async def test_a_task_returned_on_shutdown_is_a_redelivery_for_the_next_node(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    submission: str,
) -> None:
    # (the first node's own count of it, `returned`, is gone with its server a moment after
    # its last notice: the unit tests check that one)
    first = node_settings(names, broker, ftp_server, work_dir, ULOS_SHUTDOWN_GRACE=0)
    async with running_node(first) as stop:
        await line.publish(task("t-back", submission, branches(names, "pass")))
        await line.logs_until("t-back", "execution_started")
        stop.set()
        await line.logs_until("t-back", "rejected")
    port = steady_port()
    second = node_settings(names, broker, ftp_server, work_dir, ULOS_METRICS_PORT=port)
    async with running_node(second):
        [received] = [n for n in await settled(line, {"t-back"}) if n["event"] == "received"]
        again = await scrape(port)

    assert received["redelivered"] is True  # by the broker, this time
    assert again("ulos_redeliveries_total", stage="pass") == 1
    assert again("ulos_tasks_total", stage="pass", outcome="pass") == 1


async def test_health_follows_the_broker_connection(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    relay = DroppingRelay(broker)
    port = steady_port()
    settings = node_settings(
        names,
        broker,
        ftp_server,
        work_dir,
        ULOS_METRICS_PORT=port,
        MESSAGE_BROKER_PORT=await relay.start(),
    )
    try:
        async with running_node(settings):

            async def up() -> bool:
                return (await health(port))[0] == 200

            await eventually(up)  # (503 while it connects and starts consuming)
            status, answer = await health(port)
            assert answer == {
                "healthy": True,
                "connected": True,
                "consuming": True,
                "inFlight": 0,
                "nodeId": f"{names.prefix}-node",
                "queue": line.input_queue,
                "broker": f"{broker.host}:{settings.broker_port}",
            }

            relay.held = True  # the node's attempts to reconnect fail until let through
            name = f"ulos-py node {names.prefix}-node"
            assert await asyncio.to_thread(close_connection_named, name) == 1

            async def down() -> bool:
                return (await health(port))[0] == 503

            await eventually(down, timeout=5)
            await asyncio.sleep(2.5)  # a failed reconnect attempt or two: still down
            status, answer = await health(port)
            assert status == 503
            assert (answer["connected"], answer["consuming"], answer["healthy"]) == (
                False,
                True,
                False,
            )
            assert (await scrape(port))("ulos_broker_connected") == 0

            relay.held = False

            await eventually(up, timeout=20)  # it retries every 2 s
            metrics = await scrape(port)
            assert metrics("ulos_broker_connection_losses_total") == 1
            assert metrics("ulos_broker_connected") == 1

            # and it really consumes again
            path = f"/{names.prefix}/after.zip"
            ftp_server.put(path, make_zip(SUBMISSION))
            await line.publish(task("t-after", path, branches(names, "skip")))
            await settled(line, {"t-after"})
            after = await scrape(port)
            assert after("ulos_tasks_total", stage="skip", outcome="pass") == 1
    finally:
        await relay.close()


async def test_a_node_waiting_for_the_broker_serves_unhealthy(
    names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    port = steady_port()
    settings = node_settings(
        names, broker, ftp_server, work_dir, ULOS_METRICS_PORT=port, MESSAGE_BROKER_PORT=free_port()
    )
    async with running_node(settings):  # nothing answers on that broker port
        status, answer = await health(port)
        metrics = await scrape(port)
    # aio-pika leaves each failed connection to its __del__, which schedules a close on the
    # running loop: collect them while there is one, or the close is never awaited.
    gc.collect()
    await asyncio.sleep(0.1)

    assert status == 503
    assert (answer["connected"], answer["consuming"], answer["healthy"]) == (False, False, False)
    assert metrics("ulos_broker_connected") == 0
    assert metrics("ulos_consuming") == 0
