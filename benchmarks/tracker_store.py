"""What does the tracker's `Store.add` cost per notice, in-process, against a bare insert?

    python benchmarks/tracker_store.py                      # SQLite and PostgreSQL, 3 runs each
    python benchmarks/tracker_store.py --only sqlite --runs 5 --notices 40000
    python benchmarks/tracker_store.py --only sqlite --profile   # cProfile of one run

No broker: the notices of `tracker_ingest.bodies()` (10 per task) are stored in batches of 200
by `Store.add` on a fresh database, as the tracker's storing does, and by the bare equivalent
(sha256 of the body, one `INSERT … ON CONFLICT DO NOTHING` of (key, body), commit) on a table
of its own. Two orders: `aligned` (the queue's order in `tracker_ingest.py`: a task's notices
all in one batch, so every task is new to its batch) and `spread` (each batch holds 2 notices
of each of 100 tasks: a task is touched by 5 batches, its rows re-derived each time).

Per run and per notice (after 20 warm-up batches): wall µs, the process's CPU µs (all
threads: aiosqlite's included), the event loop thread's CPU µs, and for PostgreSQL the
server's CPU µs (its processes, from /proc). Runs alternate store and bare; each line says
its load average. Only the ratios within a run are robust on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import hashlib
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import uvloop
from sqlalchemy.dialects import postgresql, sqlite

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from proc_probes import cpu_seconds, listening_pids, process_tree
from tracker_bare import table
from tracker_ingest import bodies

from tests.support.postgres import start_postgres
from ulos_py.tracker.store import Incoming, Store

BATCH = 200
WARM = 20
PER_TASK = 10
WINDOW = 100
"""Tasks interleaved in the spread order: 1 000 notices, 5 batches, 2 of each task a batch."""


def spread(data: list[bytes]) -> list[bytes]:
    """The notices reordered so that each batch holds 2 of each of `WINDOW` tasks."""
    out: list[bytes] = []
    size = WINDOW * PER_TASK
    for start in range(0, len(data), size):
        window = data[start : start + size]
        tasks = [window[i : i + PER_TASK] for i in range(0, len(window), PER_TASK)]
        for step in range(0, PER_TASK, 2):
            for task in tasks:
                out += task[step : step + 2]
    return out


class Clock:
    """Wall, process, loop-thread and database-server CPU over a span."""

    def __init__(self, server: Callable[[], list[int]]) -> None:
        self.server = server

    def read(self) -> tuple[float, float, float, float]:
        db = sum(cpu_seconds(pid) for pid in self.server())
        return time.perf_counter(), time.process_time(), time.thread_time(), db


async def timed(
    batches: list[list[bytes]], one: Callable[[list[bytes]], Awaitable[None]], clock: Clock
) -> dict[str, float]:
    for batch in batches[:WARM]:
        await one(batch)
    rest = batches[WARM:]
    before = clock.read()
    for batch in rest:
        await one(batch)
    after = clock.read()
    count = sum(len(b) for b in rest)
    names = ("wall", "cpu", "loop", "db")
    return {n: (a - b) * 1e6 / count for n, a, b in zip(names, after, before, strict=True)}


async def store_run(url: str, batches: list[list[bytes]], clock: Clock) -> dict[str, float]:
    store = await Store.open(url)
    try:
        return await timed(batches, lambda b: _add(store, b), clock)
    finally:
        await store.close()


async def _add(store: Store, batch: list[bytes]) -> None:
    await store.add([Incoming(body) for body in batch])


async def bare_run(url: str, batches: list[list[bytes]], clock: Clock) -> dict[str, float]:
    store = await Store.open(url)
    async with store.engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    dialect = postgresql if store.engine.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).on_conflict_do_nothing(index_elements=["key"])

    async def one(batch: list[bytes]) -> None:
        rows = [{"key": hashlib.sha256(m).hexdigest(), "body": m.decode()} for m in batch]
        async with store.engine.begin() as conn:
            await conn.execute(statement, rows)

    try:
        return await timed(batches, one, clock)
    finally:
        await store.close()


def _line(kind: str, numbers: dict[str, float], db: bool) -> str:
    parts = [f"{k} {numbers[k]:6.1f}" for k in ("wall", "cpu", "loop")]
    if db:
        parts.append(f"db {numbers['db']:5.1f}")
    return f"{kind:5} " + "  ".join(parts)


def _summary(kind: str, runs: list[dict[str, float]], db: bool) -> str:
    keys = ("wall", "cpu", "loop", *(("db",) if db else ()))
    parts = []
    for key in keys:
        values = [r[key] for r in runs]
        low, high = min(values), max(values)
        parts.append(f"{key} {statistics.median(values):.1f} [{low:.1f}..{high:.1f}]")
    return f"  {kind:5} median [min..max] µs a notice: " + "  ".join(parts)


async def database(
    name: str,
    new_url: Callable[[], str],
    server: Callable[[], list[int]],
    args: argparse.Namespace,
) -> None:
    data = bodies(args.notices)
    clock = Clock(server)
    db = name == "postgresql"
    for order in args.orders:
        ordered = spread(data) if order == "spread" else data
        batches = [ordered[i : i + BATCH] for i in range(0, len(ordered), BATCH)]
        stores, bares = [], []
        for run in range(args.runs):
            load = os.getloadavg()[0]
            if args.profile:
                profile = cProfile.Profile()
                profile.enable()
                numbers = await store_run(new_url(), batches, clock)
                profile.disable()
                print(_line("store", numbers, db), "(profiled)")
                pstats.Stats(profile).sort_stats("tottime").print_stats(35)
                return
            stores.append(await store_run(new_url(), batches, clock))
            bares.append(await bare_run(new_url(), batches, clock))
            ratio = stores[-1]["wall"] / bares[-1]["wall"]
            print(
                f"{name} {order} run {run + 1} (load {load:.2f}): "
                f"{_line('store', stores[-1], db)} | {_line('bare', bares[-1], db)}"
                f" | store/bare wall {ratio:.2f}",
                flush=True,
            )
        print(f"{name} {order}, {args.runs} runs:")
        print(_summary("store", stores, db))
        print(_summary("bare", bares, db), flush=True)


def _sqlite_urls(tmp: Path) -> Callable[[], str]:
    names: Iterator[int] = iter(range(10**6))
    return lambda: f"sqlite:///{tmp}/t{next(names)}.sqlite3"


async def main(args: argparse.Namespace) -> None:
    print(f"load average at start: {os.getloadavg()}; {args.notices} notices, batches of {BATCH}")
    with ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-store-")))
        if args.only != "postgresql":
            await database("sqlite", _sqlite_urls(tmp), list, args)
        if args.only != "sqlite":
            cluster = start_postgres()
            server = next(cluster)
            stack.callback(cluster.close)
            roots = listening_pids(server.port)

            def pids() -> list[int]:
                return [p for root in roots for p in process_tree(root)]

            await database("postgresql", server.create_database, pids, args)
    print(f"load average at end: {os.getloadavg()}")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--notices", type=int, default=20000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument(
        "--order", dest="orders", action="append", choices=["aligned", "spread"], default=None
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one store run")
    args = parser.parse_args()
    args.orders = args.orders or ["aligned", "spread"]
    return args


if __name__ == "__main__":
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # the tracker's loop
        runner.run(main(parse()))
