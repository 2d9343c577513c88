"""The tracker benchmark's baseline, in a process of its own: consume → batch → one INSERT of
the bodies → commit → ack, and nothing else (no journey, no derived tables).

    python benchmarks/tracker_bare.py DATABASE_URL QUEUE TOTAL BROKER_URL

DATABASE_URL `-` stores nothing: consume → batch → ack alone, the ceiling of any loop over
the tracker's queue adapter on this machine (what the broker and the client cost).

It uses the tracker's own queue adapter, event loop (uvloop) and engine set-up (pool, SQLite
WAL and pragmas), the same batch size and wait, and a table of its own with a unique key (the
hash of the body, as the store's `notices`), inserted with ON CONFLICT DO NOTHING as the store
does. When TOTAL
messages are stored it prints one JSON line: when the first batch and the last batch were
committed (wall clock, as the tracker's /healthz `lastCommit`) and how many the first held,
and the CPU seconds since the first of the process and of its main thread (the event loop).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import resource
import sys
import time
from pathlib import Path

import aio_pika
import uvloop
from sqlalchemy import Column, MetaData, String, Table, Text
from sqlalchemy.dialects import postgresql, sqlite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ulos_py.adapters.notice_queue import NoticeQueue
from ulos_py.tracker.store import Store

BATCH = 200
WAIT = 0.05

table = Table("bare", MetaData(), Column("key", String(64), primary_key=True), Column("body", Text))


async def main(url: str, queue: str, total: int, broker_url: str) -> None:
    store = None if url == "-" else await Store.open(url)
    statement = None
    if store is not None:
        async with store.engine.begin() as conn:
            await conn.run_sync(table.metadata.create_all)
        dialect = postgresql if store.engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(table).on_conflict_do_nothing(index_elements=["key"])
    connection = await aio_pika.connect_robust(broker_url)
    source = await NoticeQueue.open(connection, queue, BATCH * 2)
    done, first, first_at, last_at, cpu_at_first, loop_at_first = 0, 0, 0.0, 0.0, 0.0, 0.0
    async for batch in source.batches(BATCH, WAIT):
        if store is not None and statement is not None:
            rows = [
                {"key": hashlib.sha256(m.body).hexdigest(), "body": m.body.decode()} for m in batch
            ]
            async with store.engine.begin() as conn:
                await conn.execute(statement, rows)
        last_at = time.time()
        if not done:
            first, first_at = len(batch), last_at
            cpu_at_first, loop_at_first = time.process_time(), time.thread_time()
        await source.ack(batch)
        done += len(batch)
        if done >= total:
            break
    cpu, loop_cpu = time.process_time() - cpu_at_first, time.thread_time() - loop_at_first
    await source.close()
    await connection.close()
    if store is not None:
        await store.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "stored": done,
                "first": first,
                "first_at": first_at,
                "last_at": last_at,
                "cpu_seconds": cpu,
                "loop_cpu_seconds": loop_cpu,
                "peak_rss_mib": round(peak, 1),
            }
        )
    )


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the tracker's loop
        runner.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]))
