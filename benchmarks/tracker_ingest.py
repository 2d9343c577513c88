"""How fast does the tracker store notices, against a bare loop doing the same work, and how
fast does it answer at scale? One command:

    python benchmarks/tracker_ingest.py                      # SQLite and PostgreSQL
    python benchmarks/tracker_ingest.py --notices 20000 --tasks 100000

Per database, in one run: N notices (10 per task) are put in a queue, then consumed twice —
by a **bare** asyncio loop (consume → batch of 200 → one INSERT of the bodies → commit → ack)
and by the tracker's own ingest (the same, plus the journey fold and the derived tables) —
and the ratio tracker/bare is reported. Then the store is filled with `--tasks` tasks
(`--tasks` times 7 notices' worth of derived rows, inserted directly) and the p95 latency of
`GET /api/tasks/{id}` and of a filtered list page is measured through the HTTP app.
PostgreSQL is a private cluster from tests/support/postgres.py. Needs RabbitMQ (`--broker-url`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aio_pika
import httpx
from sqlalchemy import Column, MetaData, String, Table, Text, insert

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.support.journeys import Node
from tests.support.postgres import start_postgres
from ulos_py.adapters.notice_queue import NoticeQueue
from ulos_py.tracker.api import Tracker, create_app
from ulos_py.tracker.events import Changes
from ulos_py.tracker.ingest import IngestStatus, ingest
from ulos_py.tracker.schema import tasks, visits
from ulos_py.tracker.store import Incoming, Store, _visit_rows

BATCH = 200


def bodies(count: int) -> list[bytes]:
    out: list[bytes] = []
    for i in range(count // 10):
        node = Node(f"b-{i:06}", node_id=f"n{i % 7}", start=i * 30)
        notices = [*node.stage(("a", "b", "c")), *node.stage(("b", "c"))[:3]]
        out += [json.dumps(n.body).encode() for n in notices]
    return out


async def fill(channel: aio_pika.abc.AbstractChannel, name: str, data: list[bytes]) -> None:
    await channel.declare_queue(name, durable=True)
    for start in range(0, len(data), 500):
        chunk = data[start : start + 500]
        await asyncio.gather(
            *(channel.default_exchange.publish(aio_pika.Message(b), name) for b in chunk)
        )


async def bare(connection: Any, name: str, url: str, total: int) -> float:
    """Consume → batch → one INSERT → commit → ack, and nothing else."""
    store = await Store.open(url)  # the same engine set-up (pool, WAL), a table of its own
    table = Table("bare", MetaData(), Column("key", String(64)), Column("body", Text))
    async with store.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    source = await NoticeQueue.open(connection, name, BATCH * 2)
    done = 0
    started = time.perf_counter()
    async for batch in source.batches(BATCH, 0.05):
        rows = [{"key": uuid.uuid4().hex, "body": m.body.decode()} for m in batch]
        async with store.engine.begin() as conn:
            await conn.execute(insert(table), rows)
        await source.ack(batch)
        done += len(batch)
        if done >= total:
            break
    took = time.perf_counter() - started
    await source.close()
    await store.close()
    return total / took


async def tracked(connection: Any, name: str, url: str, total: int) -> float:
    store = await Store.open(url)
    source = await NoticeQueue.open(connection, name, BATCH * 2)
    status = IngestStatus()
    started = time.perf_counter()
    finished = asyncio.Event()

    def stored(_: object) -> None:
        if status.stored >= total:
            finished.set()

    runner = asyncio.create_task(ingest(source, store, status, stored, BATCH, 0.05))
    await finished.wait()
    took = time.perf_counter() - started
    runner.cancel()
    await asyncio.gather(runner, return_exceptions=True)
    await source.close()
    await store.close()
    return total / took


async def reads(url: str, count: int, probes: int) -> dict[str, float]:
    """p95 ms of one journey and of a filtered list page at `count` tasks."""
    store = await Store.open(url)
    template = (await store.add([Incoming(b) for b in bodies(10)]))[0]
    row = store._task_row(template)
    visit_rows = list(_visit_rows(template))
    for start in range(0, count, 5000):
        ids = [f"r-{i:07}" for i in range(start, min(start + 5000, count))]
        task_rows = [{**row, "task_id": i, "owner": f"o{hash(i) % 500}"} for i in ids]
        all_visits = [{**v, "task_id": i} for i in ids for v in visit_rows]
        async with store.engine.begin() as conn:
            await conn.execute(insert(tasks), task_rows)
            await conn.execute(insert(visits), all_visits)
    app = create_app(Tracker(store, IngestStatus(consuming=True), Changes(store.stuck_after)))
    transport = httpx.ASGITransport(app=app)
    timings: dict[str, list[float]] = {"journey": [], "list": []}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(probes):
            task_id = f"r-{random.randrange(count):07}"
            started = time.perf_counter()
            assert (await client.get(f"/api/tasks/{task_id}")).status_code == 200
            timings["journey"].append((time.perf_counter() - started) * 1000)
            owner = f"o{random.randrange(500)}"
            started = time.perf_counter()
            page = await client.get("/api/tasks", params={"owner": owner, "state": "stuck"})
            assert page.status_code == 200
            timings["list"].append((time.perf_counter() - started) * 1000)
    await store.close()
    return {k: statistics.quantiles(v, n=20)[18] for k, v in timings.items()}


async def run(args: argparse.Namespace, label: str, url: str) -> dict[str, Any]:
    data = bodies(args.notices)
    connection = await aio_pika.connect_robust(args.broker_url)
    channel = await connection.channel()
    results: dict[str, Any] = {"database": label, "notices": len(data)}
    for phase, work in (("bare", bare), ("tracker", tracked)):
        name = f"bench-tracker-{uuid.uuid4().hex[:8]}"
        await fill(channel, name, data)
        results[f"{phase}_per_s"] = await work(connection, name, url, len(data))
        await channel.queue_delete(name)
    results["ratio"] = results["tracker_per_s"] / results["bare_per_s"]
    await connection.close()
    results.update({f"p95_ms_{k}": v for k, v in (await reads(url, args.tasks, 200)).items()})
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notices", type=int, default=10000)
    parser.add_argument("--tasks", type=int, default=20000, help="tasks for the read probes")
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    args = parser.parse_args()
    results = []
    work = Path(f"/tmp/bench-tracker-{uuid.uuid4().hex[:8]}")
    work.mkdir()
    if args.only != "postgresql":
        results.append(asyncio.run(run(args, "sqlite", f"sqlite:///{work / 'b.sqlite3'}")))
    if args.only != "sqlite":
        cluster = start_postgres()
        server = next(cluster)
        try:
            results.append(asyncio.run(run(args, "postgresql", server.create_database())))
        finally:
            cluster.close()
    for result in results:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
