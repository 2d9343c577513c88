"""PostgreSQL restarted while the tracker ingests: the failed batches are retried, nothing
is acked that is not stored, and every notice is there once at the end."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aio_pika
import pytest

from tests.support.ledger import REPORT
from tests.support.postgres import Postgres
from tests.support.services import Broker, Names
from tests.support.tracker import BULK_TASKS, bulk_notices
from ulos_py.adapters import rabbitmq
from ulos_py.adapters.notice_queue import NoticeQueue
from ulos_py.settings import ConnectionSettings
from ulos_py.tracker import queries
from ulos_py.tracker.ingest import IngestStatus, ingest
from ulos_py.tracker.store import Store

pytestmark = [pytest.mark.fault, pytest.mark.timeout(300)]


async def test_postgres_restarted_mid_ingest_loses_nothing(
    names: Names, broker: Broker, amqp: aio_pika.abc.AbstractRobustConnection, postgres: Postgres
) -> None:
    bodies = bulk_notices()
    channel = await amqp.channel()
    name = names.queue("tracker")
    await channel.declare_queue(name, durable=True)
    for start in range(0, len(bodies), 500):
        chunk = bodies[start : start + 500]
        await asyncio.gather(
            *(channel.default_exchange.publish(aio_pika.Message(b), name) for b in chunk)
        )
    store = await Store.open(postgres.create_database())
    settings = ConnectionSettings(
        MESSAGE_BROKER_HOST=broker.host,
        MESSAGE_BROKER_PORT=broker.port,
        MESSAGE_BROKER_USERNAME=broker.username,
        MESSAGE_BROKER_PASSWORD=broker.password,
    )
    connection = await rabbitmq.connect(rabbitmq.BrokerAddress.of(settings, "pg restart test"))
    source = await NoticeQueue.open(connection, name, prefetch=400)
    status = IngestStatus()
    runner = asyncio.create_task(ingest(source, store, status, lambda _: None, 200, 0.05))
    down = False
    try:
        async with asyncio.timeout(120):
            while status.stored < len(bodies) // 4:
                await asyncio.sleep(0.05)
        before = status.stored
        await asyncio.to_thread(postgres.stop)
        down = True
        async with asyncio.timeout(30):
            while status.writable:
                await asyncio.sleep(0.05)
        stalled = status.stored
        await asyncio.sleep(1)
        assert status.stored == stalled  # nothing acked while the database is down
        await asyncio.to_thread(postgres.start)
        down = False
        started = time.monotonic()
        async with asyncio.timeout(240):
            while status.stored < len(bodies):
                await asyncio.sleep(0.1)
        counts = await queries.counts(store)
        assert counts == {"notices": len(bodies), "unreadable": 0, "tasks": BULK_TASKS}
        REPORT.append(
            f"PostgreSQL stopped after {before} of {len(bodies)} notices stored, started again: "
            f"all {len(bodies)} stored once ({time.monotonic() - started:.1f} s to catch up)"
        )
    finally:
        runner.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await runner
        if down:  # the session's other tests need the cluster
            await asyncio.to_thread(postgres.start)
        await source.close()
        await connection.close()
        await store.close()
        await channel.queue_delete(name)
        await channel.close()
