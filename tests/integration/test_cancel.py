"""Cancelling (SPEC §8) through in-process nodes, the real broker, FTP server and Docker
engine: a running task stops within 2 s, a queued one is dropped without a download, a node
started later knows the cancel, and harmless cancels stay harmless."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import structlog

from tests.support.docker_probe import probe_registry
from tests.support.harness import (
    Pipeline,
    make_zip,
    node_settings,
    pipeline,
    running_node,
    stage,
    task,
)
from tests.support.relay import DroppingRelay
from tests.support.services import Broker, Engine, FtpServer, Names
from ulos_py.adapters import rabbitmq
from ulos_py.adapters.cancellations import follow_cancellations, publish_cancellation
from ulos_py.cancellation import CancelBoard, Cancellation

pytestmark = pytest.mark.timeout(90)

CANCEL_EXCHANGE = "ulos-cancellations"
SUBMISSION = {"main.py": "print('hello')\n"}
STOP_WITHIN = 2.0
SLEEPS = "import time\nprint('working', flush=True)\ntime.sleep(60)\n"


@pytest.fixture
async def line(names: Names, amqp) -> AsyncIterator[Pipeline]:  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def slow_registry(tmp_path: Path) -> Path:
    """`slow` runs for a minute unless stopped; `skip` passes at once."""
    path = tmp_path / "registry.toml"
    path.write_text(
        '[[route]]\nstage = "slow"\nexecutor = "slow"\n\n'
        '[[route]]\nstage = "skip"\nexecutor = "skip"\n\n'
        '[executor.slow]\nkind = "builtin"\nbehaviour = "pass"\ndelay_seconds = 60\n\n'
        '[executor.skip]\nkind = "builtin"\nbehaviour = "pass"\ndelay_seconds = 0\n'
    )
    return path


async def cancel(amqp: aio_pika.abc.AbstractRobustConnection, task_id: str, reason: str) -> float:
    """Publish a cancel as `ulos-py cancel` does; returns when it was confirmed."""
    publisher = await rabbitmq.RabbitPublisher.open(amqp)
    await publish_cancellation(
        publisher, CANCEL_EXCHANGE, Cancellation.now(task_id, "tester@lab", reason)
    )
    return time.monotonic()


def tree(names: Names, key: str) -> dict[str, Any]:
    return stage(names.exchange, key, success=stage(names.exchange, "next-key"))


async def events_of(line: Pipeline, task_id: str, until: str = "acked") -> list[str]:
    return [n["event"] for n in await line.logs_until(task_id, until)]


async def test_a_running_task_stops_within_2_s_and_the_others_go_on(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    tmp_path: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    doomed, other = f"{names.prefix}-doomed", f"{names.prefix}-other"
    path = f"/{names.prefix}/doomed.zip"
    original = make_zip(SUBMISSION)
    ftp_server.put(path, original)
    ftp_server.put(f"/{names.prefix}/other.zip", make_zip(SUBMISSION))
    settings = node_settings(
        names,
        broker,
        ftp_server,
        work_dir,
        ULOS_EXECUTORS_FILE=slow_registry(tmp_path),
        MESSAGE_BROKER_REQUEUE_ON_REJECT=True,  # a cancel is acked whatever this says
    )
    async with running_node(settings):
        await line.publish(task(doomed, path, tree(names, "slow")))
        assert "execution_started" in await events_of(line, doomed, "execution_started")
        sent = await cancel(amqp, doomed, "runaway grader")
        crash = await line.next_json("crashes", timeout=STOP_WITHIN + 1)
        stopped_after = time.monotonic() - sent
        assert await events_of(line, doomed) == ["crashed", "acked"]
        await line.publish(task(other, f"/{names.prefix}/other.zip", tree(names, "skip")))
        forwarded = await line.next_json("next")

    assert stopped_after < STOP_WITHIN
    assert crash["taskId"] == doomed
    assert crash["error"]["kind"] == "cancelled"
    assert crash["error"]["cancelledBy"] == "tester@lab"
    assert crash["error"]["reason"] == "runaway grader"
    assert crash["error"]["detail"] == "cancelled by tester@lab: runaway grader"
    assert "requeued" not in crash["error"]
    assert ftp_server.get(path) == original  # nothing uploaded
    assert forwarded["taskId"] == other  # the node went on; only the other was forwarded
    assert line.empty("next")
    assert await line.depth() == 0  # acked, not requeued
    assert list(work_dir.iterdir()) == []


@pytest.mark.usefixtures("executor_images")
async def test_a_docker_task_stops_within_2_s_and_its_container_is_gone(
    line: Pipeline,
    amqp: aio_pika.abc.AbstractRobustConnection,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    docker_engine: Engine,
    work_dir: Path,
    tmp_path: Path,
) -> None:
    doomed = f"{names.prefix}-container"  # task ids in the shared stream must never repeat
    path = f"/{names.prefix}/container.zip"
    original = make_zip({"run.py": SLEEPS})
    ftp_server.put(path, original)
    settings = node_settings(
        names, broker, ftp_server, work_dir, ULOS_EXECUTORS_FILE=probe_registry(tmp_path)
    )
    async with running_node(settings):
        await line.publish(task(doomed, path, tree(names, "probe"), timeout=60))
        await line.logs_until(doomed, "execution_started")
        for _ in range(100):  # until the container is up
            if docker_engine.containers_of(settings.node_id):
                break
            await asyncio.sleep(0.1)
        assert docker_engine.containers_of(settings.node_id)
        sent = await cancel(amqp, doomed, "withdrawn")
        crash = await line.next_json("crashes", timeout=STOP_WITHIN + 1)
        stopped_after = time.monotonic() - sent
        # killed and removed by the time of the notice
        assert docker_engine.containers_of(settings.node_id) == []
    assert stopped_after < STOP_WITHIN
    assert crash["taskId"] == doomed
    assert crash["error"]["kind"] == "cancelled"
    assert ftp_server.get(path) == original  # nothing uploaded
    assert line.empty("next") and line.empty("failed")
    assert await line.depth() == 0
    assert list(work_dir.iterdir()) == []


async def test_a_queued_task_is_dropped_without_a_download(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    tmp_path: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    busy, queued = f"{names.prefix}-busy", f"{names.prefix}-queued"
    ftp_server.put(f"/{names.prefix}/busy.zip", make_zip(SUBMISSION))
    # No file for the queued task: a download would crash it with kind `download`.
    settings = node_settings(
        names,
        broker,
        ftp_server,
        work_dir,
        ULOS_EXECUTORS_FILE=slow_registry(tmp_path),
        MESSAGE_BROKER_PREFETCH_COUNT=1,
    )
    async with running_node(settings):
        await line.publish(task(busy, f"/{names.prefix}/busy.zip", tree(names, "slow")))
        await line.logs_until(busy, "execution_started")
        await line.publish(task(queued, f"/{names.prefix}/missing.zip", tree(names, "skip")))
        await cancel(amqp, queued, "resubmitted")
        await asyncio.sleep(0.3)
        assert await line.depth() == 1  # still waiting behind the busy one
        await cancel(amqp, busy, "make room")
        crashes = [await line.next_json("crashes"), await line.next_json("crashes")]
        events = await events_of(line, queued)
    by_task = {c["taskId"]: c["error"] for c in crashes}
    assert by_task[queued]["kind"] == by_task[busy]["kind"] == "cancelled"
    assert by_task[queued]["reason"] == "resubmitted"
    assert events == ["received", "crashed", "acked"]  # no `downloaded`
    assert await line.depth() == 0


async def test_a_node_started_after_the_cancel_knows_it(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    early = f"{names.prefix}-early"
    await cancel(amqp, early, "withdrawn before any node ran")
    await line.publish(task(early, f"/{names.prefix}/missing.zip", tree(names, "skip")))
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        crash = await line.next_json("crashes")
        events = await events_of(line, early)
    assert crash["taskId"] == early
    assert crash["error"]["kind"] == "cancelled"
    assert events == ["received", "crashed", "acked"]


async def test_unknown_finished_and_repeated_cancels_do_no_harm(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    done, fresh = f"{names.prefix}-done", f"{names.prefix}-fresh"
    for name in ("done", "fresh"):
        ftp_server.put(f"/{names.prefix}/{name}.zip", make_zip(SUBMISSION))
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        await line.publish(task(done, f"/{names.prefix}/done.zip", tree(names, "skip")))
        assert (await line.next_json("next"))["taskId"] == done
        await events_of(line, done)
        for task_id in (
            done,
            done,
            f"{names.prefix}-never-existed",
            f"{names.prefix}-never-existed",
        ):
            await cancel(amqp, task_id, "twice")
        await line.publish(task(fresh, f"/{names.prefix}/fresh.zip", tree(names, "skip")))
        forwarded = await line.next_json("next")
        events = await events_of(line, fresh)
    assert forwarded["taskId"] == fresh
    assert "crashed" not in events
    assert line.empty("crashes")


async def test_a_forwarded_task_is_stopped_at_its_next_stage(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    tmp_path: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """Stage one passed and forwarded it before the cancel; the node of stage two drops it."""
    moving = f"{names.prefix}-moving"
    ftp_server.put(f"/{names.prefix}/moving.zip", make_zip(SUBMISSION))
    channel = await amqp.channel()
    second = await channel.declare_queue(names.queue("second"), auto_delete=True)
    await second.bind(names.exchange, "pass")
    two_stages = stage(
        names.exchange,
        "skip",
        success=stage(names.exchange, "pass", success=tree(names, "skip")),
    )
    registry = slow_registry(tmp_path)
    first_node = node_settings(names, broker, ftp_server, work_dir, ULOS_EXECUTORS_FILE=registry)
    async with running_node(first_node):
        await line.publish(task(moving, f"/{names.prefix}/moving.zip", two_stages))
        assert (await events_of(line, moving))[-2:] == ["forwarded", "acked"]
    await cancel(amqp, moving, "changed my mind")
    second_node = node_settings(
        names,
        broker,
        ftp_server,
        work_dir,
        MESSAGE_BROKER_CONSUMPTION_QUEUE=names.queue("second"),
        ULOS_NODE_ID=f"{names.prefix}-second",
    )
    async with running_node(second_node):
        crash = await line.next_json("crashes")
        events = await events_of(line, moving)
    assert crash["stage"]["routingKey"] == "pass"
    assert crash["error"]["kind"] == "cancelled"
    assert events == ["received", "crashed", "acked"]
    assert line.empty("next")
    await channel.close()


async def test_a_starting_node_reads_the_whole_stream_before_its_first_task(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """Thousands of cancels, one message each, ahead of the one that matters (the last)."""
    exchange_name, stream_name = names.queue("cancel-x"), names.queue("cancel-s")
    channel = await amqp.channel(publisher_confirms=True)
    exchange = await channel.declare_exchange(exchange_name, "fanout", auto_delete=True)
    stream = await channel.declare_queue(
        stream_name, durable=True, arguments={"x-queue-type": "stream"}
    )
    await stream.bind(exchange, "")
    last = f"{names.prefix}-last"
    try:
        ids = [f"{names.prefix}-other-{n}" for n in range(3000)] + [last]
        for start in range(0, len(ids), 500):
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(
                            json.dumps(Cancellation.now(task_id, "bulk", "").body()).encode()
                        ),
                        "",
                    )
                    for task_id in ids[start : start + 500]
                )
            )
        await line.publish(task(last, f"/{names.prefix}/missing.zip", tree(names, "skip")))
        settings = node_settings(
            names,
            broker,
            ftp_server,
            work_dir,
            ULOS_CANCEL_EXCHANGE=exchange_name,
            ULOS_CANCEL_STREAM=stream_name,
        )
        async with running_node(settings):
            crash = await line.next_json("crashes", timeout=60)
    finally:
        await channel.queue_delete(stream_name)
        await channel.close()
    assert crash["taskId"] == last
    assert crash["error"]["kind"] == "cancelled"


async def test_an_empty_stream_is_read_without_a_warning(
    names: Names, amqp: aio_pika.abc.AbstractRobustConnection
) -> None:
    """A broker no cancel was ever sent to: the node's start says nothing is wrong."""
    exchange_name, stream_name = names.queue("cancel-x"), names.queue("cancel-s")
    channel = await amqp.channel()
    exchange = await channel.declare_exchange(exchange_name, "fanout", auto_delete=True)
    stream = await channel.declare_queue(
        stream_name, durable=True, arguments={"x-queue-type": "stream"}
    )
    await stream.bind(exchange, "")
    board = CancelBoard()
    try:
        with structlog.testing.capture_logs() as logs:
            stop = await follow_cancellations(amqp, exchange_name, stream_name, board)
            await stop()
    finally:
        await channel.queue_delete(stream_name)
        await channel.close()
    assert [entry for entry in logs if entry["log_level"] == "warning"] == []
    assert any(entry["event"] == "cancellations_known" for entry in logs)
    assert not board.memory


async def consumers(line: Pipeline) -> int:
    channel = await line.channel.get_underlay_channel()
    result = await channel.queue_declare(line.input_queue, passive=True)
    return int(result.consumer_count or 0)


async def test_a_node_that_lost_the_broker_reads_on_from_where_it_stopped(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    tmp_path: Path,
    amqp: aio_pika.abc.AbstractRobustConnection,
) -> None:
    """The stream is the node's one source of cancels: one published while the node was
    cut off is known once it is back, and a later one still stops a running task."""
    missed, live = f"{names.prefix}-missed", f"{names.prefix}-live"
    ftp_server.put(f"/{names.prefix}/live.zip", make_zip(SUBMISSION))
    relay = DroppingRelay(broker)
    settings = node_settings(
        names,
        broker,
        ftp_server,
        work_dir,
        ULOS_EXECUTORS_FILE=slow_registry(tmp_path),
        MESSAGE_BROKER_PORT=await relay.start(),
    )
    try:
        async with running_node(settings):
            await cancel(amqp, f"{names.prefix}-before", "heard before the loss")
            await asyncio.sleep(0.5)
            relay.held = True
            relay.drop()
            await cancel(amqp, missed, "sent while the node was cut off")
            relay.held = False
            deadline = time.monotonic() + 20  # the robust connection retries every 2 s
            while await consumers(line) == 0 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await line.publish(task(missed, f"/{names.prefix}/missing.zip", tree(names, "skip")))
            missed_crash = await line.next_json("crashes", timeout=20)
            await line.publish(task(live, f"/{names.prefix}/live.zip", tree(names, "slow")))
            await line.logs_until(live, "execution_started")
            sent = await cancel(amqp, live, "after the reconnect")
            live_crash = await line.next_json("crashes", timeout=STOP_WITHIN + 1)
            stopped_after = time.monotonic() - sent
    finally:
        await relay.close()
    assert (missed_crash["taskId"], missed_crash["error"]["kind"]) == (missed, "cancelled")
    assert (live_crash["taskId"], live_crash["error"]["kind"]) == (live, "cancelled")
    assert stopped_after < STOP_WITHIN
