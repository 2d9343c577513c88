"""A task that crashes every time, with MESSAGE_BROKER_REQUEUE_ON_REJECT: requeued and
counted until ULOS_MAX_DELIVERIES, then rejected for good and dead-lettered."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.harness import (
    Pipeline,
    make_zip,
    next_message,
    node_settings,
    pipeline,
    running_node,
    stage,
    task,
)
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def line(names: Names, amqp):  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


async def test_poison_task_is_dead_lettered_after_the_limit(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    # The input queue again, now with a dead-letter exchange, as `topology apply` declares.
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
    path = f"/{names.prefix}/poison.zip"
    ftp_server.put(path, make_zip({"main.py": "print(1)\n"}))
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    settings = node_settings(
        names,
        broker,
        ftp_server,
        work_dir,
        MESSAGE_BROKER_REQUEUE_ON_REJECT=True,
        ULOS_MAX_DELIVERIES=3,
    )

    async with running_node(settings):
        await line.publish(task("poison", path, stage(names.exchange, "crash")), priority=4)
        crashes = [await line.next_json("crashes") for _ in range(3)]
        dead_lettered = await next_message(dead)

    assert [c["error"]["delivery"] for c in crashes] == [1, 2, 3]
    assert [c["error"]["requeued"] for c in crashes] == [True, True, False]
    assert "not requeued again" in crashes[-1]["error"]["detail"]
    assert line.empty("crashes")  # no fourth attempt
    assert b'"taskId": "poison"' in dead_lettered.body
    assert dead_lettered.priority == 4  # the requeued copies kept the message's properties
    assert dead_lettered.headers["x-ulos-deliveries"] == 3
    await dead_lettered.ack()
    assert await line.depth() == 0
