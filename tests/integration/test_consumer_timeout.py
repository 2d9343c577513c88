"""Long tasks against a broker whose consumer (delivery acknowledgement) timeout is 5 s.

A private RabbitMQ node (tests/support/short_timeout_broker.py) closes a channel that
holds a delivery unacknowledged for 5 s and hands the delivery out again. The first tests
pin that behaviour down, so a broker that changes it is noticed; the others show that a node
leases a task that may run longer (`Delivery.lease`): it runs once, its channel stays open,
and a node killed mid-task loses nothing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import pytest
from aio_pika.abc import AbstractRobustConnection

from tests.support.harness import (
    Pipeline,
    make_zip,
    next_message,
    node_values,
    pipeline,
    running_node,
    stage,
    task,
)
from tests.support.services import FtpServer, Names
from tests.support.short_timeout_broker import (
    CONSUMER_TIMEOUT_MS,
    TIMED_OUT,
    PrivateBroker,
    short_timeout_broker,  # noqa: F401  (the fixture, for this module)
)
from ulos_py.adapters.rabbitmq_deliveries import LEASE_PREFIX
from ulos_py.adapters.rabbitmq_tooling import declare_topology
from ulos_py.settings import Settings
from ulos_py.topology import QueueSpec, Topology

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
LONG_SECONDS = 20
"""The `long` stage's execution: four times the broker's timeout."""

REGISTRY = f"""
[[route]]
stage = "long"
executor = "long"

[[route]]
stage = "slow"
executor = "slow"

[[route]]
stage = "crash-late"
executor = "crash-late"

[executor.long]
kind = "builtin"
behaviour = "pass"
delay_seconds = {LONG_SECONDS}

[executor.slow]
kind = "builtin"
behaviour = "pass"
delay_seconds = 8

[executor.crash-late]
kind = "builtin"
behaviour = "crash"
delay_seconds = 1
"""


@pytest.fixture
async def private_amqp(
    short_timeout_broker: PrivateBroker,  # noqa: F811
) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(short_timeout_broker.url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def line(names: Names, private_amqp: AbstractRobustConnection) -> AsyncIterator[Pipeline]:
    async with pipeline(names, private_amqp) as created:
        yield created


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(REGISTRY)
    return path


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def settings_values(
    names: Names,
    broker: PrivateBroker,
    ftp: FtpServer,
    work_dir: Path,
    registry: Path,
    **overrides: Any,
) -> dict[str, Any]:
    """A node that knows the broker's 5 s timeout and leases what may outlast it."""
    lease: dict[str, Any] = {
        "ULOS_EXECUTORS_FILE": registry,
        "ULOS_BROKER_CONSUMER_TIMEOUT": CONSUMER_TIMEOUT_MS / 1000,
        "ULOS_LEASE_MARGIN": 5,
        "ULOS_SHUTDOWN_GRACE": 0.5,
        "ULOS_PROCESSES": 1,
    }
    return node_values(names, broker, ftp, work_dir, **{**lease, **overrides})


def submit(names: Names, ftp: FtpServer, task_id: str, key: str, timeout: float) -> dict[str, Any]:
    path = f"/{names.prefix}/{task_id}.zip"
    ftp.put(path, make_zip({"main.py": "print('long')\n"}))
    return task(
        task_id,
        path,
        stage(names.exchange, key, success=stage(names.exchange, "next-key")),
        timeout,
    )


async def notices(line: Pipeline, task_id: str, seconds: float) -> list[dict[str, Any]]:
    """The task's log notices arriving within `seconds`."""
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            notice = await line.next_json("logs", timeout=left)
        except TimeoutError:
            break
        if notice.get("taskId") == task_id:
            seen.append(notice)
    return seen


def start_node_process(values: dict[str, Any], output: Path) -> subprocess.Popen[bytes]:
    """`ulos-py node` as a process of its own (one worker), its output in `output`."""
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("MESSAGE_BROKER", "ULOS_"))},
        **{k: str(v) for k, v in values.items()},
    }
    with output.open("w") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "ulos_py", "node"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


async def consumers(line: Pipeline) -> int:
    channel = await line.channel.get_underlay_channel()
    result = await channel.queue_declare(line.input_queue, passive=True)
    return int(result.consumer_count or 0)


def stamp(notice: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(notice["timestamp"])


def events(seen: list[dict[str, Any]], node_id: str | None = None) -> list[str]:
    return [n["event"] for n in seen if node_id is None or n["nodeId"] == node_id]


# --- the broker ----------------------------------------------------------------------------


async def test_the_broker_closes_a_channel_holding_a_delivery_past_its_timeout(
    private_amqp: AbstractRobustConnection,
    names: Names,
    short_timeout_broker: PrivateBroker,  # noqa: F811
) -> None:
    """What RabbitMQ does (3.8.15 to 4.2, and 4.3+ for clients without cancel notifications):
    it closes the channel with PRECONDITION_FAILED and delivers the message again."""
    channel = await private_amqp.channel()
    # Not auto-deleted: the closing channel takes the queue's only consumer with it.
    queue = await channel.declare_queue(names.queue("held"), durable=True)
    deliveries: asyncio.Queue[tuple[float, bool]] = asyncio.Queue()
    closed: asyncio.Future[tuple[float, BaseException | None]] = asyncio.Future()

    async def hold(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        deliveries.put_nowait((time.monotonic(), bool(message.redelivered)))  # never acked

    def on_close(_channel: object, exc: BaseException | None = None) -> None:
        if not closed.done():
            closed.set_result((time.monotonic(), exc))

    channel.close_callbacks.add(on_close)
    await channel.default_exchange.publish(aio_pika.Message(b"held"), queue.name)
    await queue.consume(hold)
    delivered, redelivered = await asyncio.wait_for(deliveries.get(), 10)
    closed_at, reason = await asyncio.wait_for(closed, 30)
    again_at, again_redelivered = await asyncio.wait_for(deliveries.get(), 10)

    held = closed_at - delivered
    print(
        f"\nchannel closed {held:.1f} s after the delivery; delivered again after "
        f"{again_at - closed_at:.1f} s more"
    )
    assert not redelivered
    assert isinstance(reason, aiormq.exceptions.ChannelPreconditionFailed)
    assert TIMED_OUT in str(reason)
    assert CONSUMER_TIMEOUT_MS / 1000 <= held < CONSUMER_TIMEOUT_MS / 1000 + 5
    assert again_redelivered  # the robust channel came back and got it again
    await channel.queue_delete(queue.name)
    await channel.close()


async def test_without_a_lease_a_long_task_is_run_twice(
    line: Pipeline,
    names: Names,
    short_timeout_broker: PrivateBroker,  # noqa: F811
    ftp_server: FtpServer,
    work_dir: Path,
    registry: Path,
) -> None:
    """The failure this feature exists for: the node does not know the broker's timeout."""
    values = settings_values(
        names,
        short_timeout_broker,
        ftp_server,
        work_dir,
        registry,
        ULOS_BROKER_CONSUMER_TIMEOUT=0,  # "the broker has no timeout": nothing is leased
    )
    timeouts_before = short_timeout_broker.channel_timeouts()
    started = time.monotonic()
    async with running_node(Settings(**values)):
        await line.publish(submit(names, ftp_server, "twice", "long", timeout=LONG_SECONDS + 10))
        first = await line.logs_until("twice", "execution_started", timeout=10)
        second = await line.logs_until("twice", "execution_started", timeout=20)
        second_at = time.monotonic() - started

    print(
        f"\nwithout a lease: second run started {second_at:.1f} s after the publish, "
        f"while the first had {LONG_SECONDS} s to go"
    )
    assert "leased" not in events(first + second)
    [again] = [n for n in second if n["event"] == "received"]
    assert again["redelivered"] is True
    assert second_at < LONG_SECONDS  # the first run was still going
    assert short_timeout_broker.channel_timeouts() > timeouts_before


# --- the lease -----------------------------------------------------------------------------


async def test_a_leased_long_task_runs_once_and_its_channel_stays_open(
    line: Pipeline,
    names: Names,
    short_timeout_broker: PrivateBroker,  # noqa: F811
    ftp_server: FtpServer,
    work_dir: Path,
    registry: Path,
) -> None:
    values = settings_values(names, short_timeout_broker, ftp_server, work_dir, registry)
    timeouts_before = short_timeout_broker.channel_timeouts()
    started = time.monotonic()
    async with running_node(Settings(**values)):
        await line.publish(submit(names, ftp_server, "once", "long", timeout=LONG_SECONDS + 10))
        life = await line.logs_until("once", "acked", timeout=LONG_SECONDS + 15)
        done_at = time.monotonic() - started
        life += await notices(line, "once", seconds=CONSUMER_TIMEOUT_MS / 1000 + 3)
        forwarded = await line.next_json("next", timeout=5)
        leases = await asyncio.to_thread(
            short_timeout_broker.queues, f"{LEASE_PREFIX}{line.input_queue}."
        )

    print(f"\nleased: {LONG_SECONDS} s task done {done_at:.1f} s after the publish")
    assert events(life) == [
        "received",
        "downloaded",
        "leased",
        "execution_started",
        "execution_finished",
        "uploaded",
        "forwarded",
        "acked",
    ]
    [leased] = [n for n in life if n["event"] == "leased"]
    assert leased["leaseSeconds"] == LONG_SECONDS + 10 + 5
    assert forwarded["taskId"] == "once"
    assert line.empty("next")  # forwarded once
    assert short_timeout_broker.channel_timeouts() == timeouts_before  # no channel closed
    assert leases == []  # the lease was settled with the task
    assert await line.depth() == 0


async def test_a_node_killed_under_a_lease_loses_nothing(
    line: Pipeline,
    names: Names,
    short_timeout_broker: PrivateBroker,  # noqa: F811
    ftp_server: FtpServer,
    work_dir: Path,
    registry: Path,
    tmp_path: Path,
) -> None:
    """SIGKILL mid-task: when the lease runs out the broker gives the task back to its queue,
    and another node runs it to its end."""
    lease_seconds = 10 + 2  # the task's timeout + ULOS_LEASE_MARGIN
    values = settings_values(
        names,
        short_timeout_broker,
        ftp_server,
        work_dir,
        registry,
        ULOS_LEASE_MARGIN=2,
        ULOS_NODE_ID=f"{names.prefix}-a",
    )
    output = tmp_path / "node-a.log"
    node_a = start_node_process(values, output)
    try:
        deadline = time.monotonic() + 30
        while await consumers(line) < 1:
            assert node_a.poll() is None, output.read_text()
            assert time.monotonic() < deadline, output.read_text()
            await asyncio.sleep(0.2)
        await line.publish(submit(names, ftp_server, "survivor", "slow", timeout=10))
        before = await line.logs_until("survivor", "execution_started", timeout=15)
        [leased] = [n for n in before if n["event"] == "leased"]
        leased_at = time.monotonic()

        b_values = {**values, "ULOS_NODE_ID": f"{names.prefix}-b"}
        settings_b = Settings(**b_values)
        async with running_node(settings_b):
            node_a.send_signal(signal.SIGKILL)
            await asyncio.to_thread(node_a.wait, 10)
            killed_at = time.monotonic() - leased_at
            after = await line.logs_until("survivor", "acked", timeout=lease_seconds + 20)
            done_at = time.monotonic() - leased_at
            forwarded = await line.next_json("next", timeout=5)
    finally:
        if node_a.poll() is None:
            node_a.kill()
            node_a.wait()

    [received] = [n for n in after if n["event"] == "received"]
    back_at = (stamp(received) - stamp(leased)).total_seconds()
    print(
        f"\nnode A killed {killed_at:.1f} s after its lease of {lease_seconds} s; node B "
        f"received the task {back_at:.1f} s after the lease and finished at {done_at:.1f} s"
    )
    assert leased["nodeId"] == f"{names.prefix}-a"
    assert leased["leaseSeconds"] == lease_seconds
    assert events(before, f"{names.prefix}-a")[-2:] == ["leased", "execution_started"]
    assert set(n["nodeId"] for n in after) == {f"{names.prefix}-b"}
    assert received["redelivered"] is True  # its second delivery, counted by the lease
    assert events(after).count("execution_started") == 1
    assert events(after)[-2:] == ["forwarded", "acked"]
    assert forwarded["taskId"] == "survivor"
    assert line.empty("next")
    assert lease_seconds - 0.5 <= back_at < lease_seconds + 10  # when the lease ran out


async def test_leases_borrow_from_the_prefetch_window_so_no_delivery_waits_for_a_slot(
    line: Pipeline,
    names: Names,
    short_timeout_broker: PrivateBroker,  # noqa: F811
    ftp_server: FtpServer,
    work_dir: Path,
    registry: Path,
) -> None:
    """Prefetch 1: once the running task is leased (its delivery acked), the broker must not
    hand the node a second task to hold, unacknowledged, until the slot is free; that one
    would reach the timeout waiting. The second task stays ready in the queue instead."""
    values = settings_values(
        names,
        short_timeout_broker,
        ftp_server,
        work_dir,
        registry,
        MESSAGE_BROKER_PREFETCH_COUNT=1,
    )
    timeouts_before = short_timeout_broker.channel_timeouts()
    async with running_node(Settings(**values)):
        for task_id in ("first", "second"):
            await line.publish(submit(names, ftp_server, task_id, "slow", timeout=10))
        await line.logs_until("first", "execution_started", timeout=10)
        await asyncio.sleep(CONSUMER_TIMEOUT_MS / 1000 + 2)  # past the broker's timeout
        waiting = await line.depth()
        seen = await line.logs_until("second", "acked", timeout=30)
        seen += await notices(line, "second", seconds=3)
        forwarded = [await line.next_json("next", timeout=5) for _ in range(2)]

    assert waiting == 1  # ready in the queue, not held by the busy node
    assert events(seen).count("execution_started") == 1
    assert [f["taskId"] for f in forwarded] == ["first", "second"]
    assert line.empty("next")
    assert short_timeout_broker.channel_timeouts() == timeouts_before


async def test_a_leased_task_that_crashes_is_counted_requeued_and_dead_lettered_by_its_queue(
    line: Pipeline,
    names: Names,
    short_timeout_broker: PrivateBroker,  # noqa: F811
    ftp_server: FtpServer,
    work_dir: Path,
    registry: Path,
) -> None:
    """Settling a lease like the delivery: a counted requeue puts a copy back; a reject for
    good sends it back through its queue to be rejected there, so the queue's own
    dead-letter exchange gets it."""
    dead_exchange = await line.channel.declare_exchange(
        f"{names.prefix}.dead", "fanout", auto_delete=True
    )
    dead = await line.channel.declare_queue(names.queue("dead"), auto_delete=True)
    await dead.bind(dead_exchange)
    await line.channel.queue_delete(line.input_queue)
    await line.channel.declare_queue(
        line.input_queue,
        arguments={"x-max-priority": 10, "x-dead-letter-exchange": f"{names.prefix}.dead"},
    )
    values = settings_values(
        names,
        short_timeout_broker,
        ftp_server,
        work_dir,
        registry,
        MESSAGE_BROKER_REQUEUE_ON_REJECT=True,
        ULOS_MAX_DELIVERIES=2,
    )
    async with running_node(Settings(**values)):
        await line.publish(
            submit(names, ftp_server, "doomed", "crash-late", timeout=30), priority=3
        )
        crashes = [await line.next_json("crashes", timeout=15) for _ in range(2)]
        dead_lettered = await next_message(dead)
        life = await notices(line, "doomed", seconds=3)
        leases = await asyncio.to_thread(
            short_timeout_broker.queues, f"{LEASE_PREFIX}{line.input_queue}."
        )

    assert [c["error"]["requeued"] for c in crashes] == [True, False]
    assert line.empty("crashes")
    assert b'"taskId": "doomed"' in dead_lettered.body
    assert dead_lettered.priority == 3
    assert dead_lettered.headers["x-ulos-rejected"] is True
    deaths: list[dict[str, Any]] = dead_lettered.headers["x-death"]  # type: ignore[assignment]
    assert [(d["reason"], d["queue"]) for d in deaths] == [("rejected", line.input_queue)]
    assert events(life).count("execution_started") == 2  # the rejected copy was not run
    assert events(life).count("leased") == 2
    assert leases == []


async def test_a_leased_task_goes_back_to_its_queue_when_the_node_stops(
    line: Pipeline,
    names: Names,
    short_timeout_broker: PrivateBroker,  # noqa: F811
    ftp_server: FtpServer,
    work_dir: Path,
    registry: Path,
) -> None:
    """Shutdown past the grace period: the leased task is put back (counted), the lease
    deleted, so the next node need not wait for the lease to run out."""
    values = settings_values(names, short_timeout_broker, ftp_server, work_dir, registry)
    async with running_node(Settings(**values)):
        await line.publish(submit(names, ftp_server, "stopped", "long", timeout=LONG_SECONDS))
        life = await line.logs_until("stopped", "execution_started", timeout=10)
    life += await line.logs_until("stopped", "rejected", timeout=5)
    returned = await line.channel.get_underlay_channel()
    got = await returned.basic_get(line.input_queue, no_ack=True)
    leases = await asyncio.to_thread(
        short_timeout_broker.queues, f"{LEASE_PREFIX}{line.input_queue}."
    )

    assert "leased" in events(life)
    assert [n["requeued"] for n in life if n["event"] == "rejected"] == [True]
    assert got.body is not None and b'"taskId": "stopped"' in got.body
    assert got.header.properties.headers is not None
    assert got.header.properties.headers["x-ulos-deliveries"] == 2
    assert await line.depth() == 0
    assert leases == []


async def test_a_broker_older_than_3_12_accepts_and_ignores_a_queue_consumer_timeout(
    private_amqp: AbstractRobustConnection,
    names: Names,
    short_timeout_broker: PrivateBroker,  # noqa: F811
) -> None:
    """`consumer_timeout_ms` in a topology file: RabbitMQ 3.12+ honours `x-consumer-timeout`
    (4.3+ on quorum queues only); this 3.10 node takes the declaration and keeps the global
    timeout, so one topology file serves every version."""
    spec = QueueSpec(name=names.queue("long-runs"), consumer_timeout_ms=7_200_000)
    await declare_topology(private_amqp, Topology(queue=(spec,)))
    await declare_topology(private_amqp, Topology(queue=(spec,)))  # again: nothing changes
    listed = await asyncio.to_thread(
        short_timeout_broker.ctl, "list_queues", "name", "arguments", "--no-table-headers"
    )
    channel = await private_amqp.channel()
    await channel.queue_delete(spec.name)
    await channel.close()

    [line_of_queue] = [row for row in listed.splitlines() if row.startswith(spec.name)]
    assert "x-consumer-timeout" in line_of_queue and "7200000" in line_of_queue
