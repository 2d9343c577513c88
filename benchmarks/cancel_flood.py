#!/usr/bin/env python
"""A flood of cancellations against a real `ulos-py node`: does it slow the node's tasks, and
how much memory does the node's memory of cancellations take? (SPEC §8, issue point 7)

    python benchmarks/cancel_flood.py [--tasks 1500] [--cancels 100000] [--flood-rate 0] [--json]
    python benchmarks/cancel_flood.py --cancels 20000 --tasks 300 --skip-restart   # ~2 minutes

1. In process: a `CancellationMemory` at its default limit, filled with `--cancels` and then
   as many again: its size stays at the limit; bytes per entry by tracemalloc.
2. A real node (one process, prefetch 20, built-in `skip` stage, 10 KiB zips over FTP):
   - quiet: the rate of `--tasks` tasks with no cancel in sight;
   - flood: the same while another process publishes `--cancels` cancels of other tasks
     (confirmed, `--batch` ids to a message, at most `--flood-rate` messages a second, or
     as fast as the broker takes them), which the node reads from the stream;
   - restarted: a new node that reads the whole flood from the stream at start, then the
     quiet run again with a full memory.
   The node's RSS is read from /proc before and after each phase, and its CPU every 0.25 s.

Verdicts, for the window in which the flood and the tasks both ran: the node's CPU per task
(what the flood costs the node itself, robust to other processes on the machine) and its
rate, each within 10 % of the quiet phase's; and the node's RSS growth within what the
README states. On a shared 2-core machine the publisher and the broker compete with the
node for the same cores, so the rate is disturbed by the flood's other costs too: the report
gives their CPU and the machine's load average.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import tracemalloc
import uuid
from contextlib import AsyncExitStack, suppress
from pathlib import Path
from typing import Any

import aio_pika
from bench_fixtures import (
    CRASH_KEY,
    FTP_PASSWORD,
    FTP_USER,
    LOGS_KEY,
    Broker,
    Ftp,
    Topology,
    declare_cancellations,
    declare_topology,
    delete_topology,
    ftp_server,
    make_zip,
    place_zips,
    publish_tasks,
    say,
)
from node_throughput import REGISTRY, NodeProcess
from proc_probes import cpu_seconds, rss_mib

from ulos_py.cancellation import (
    DEFAULT_MAX_ENTRIES,
    Cancellation,
    CancellationMemory,
    batch_body,
)

MAX_SLOWDOWN = 0.10
MEMORY_LIMIT_MIB = 64.0
"""What the README promises a node's RSS grows by at most under any flood (see there)."""
FLOOD_IN_FLIGHT = 500
"""Messages awaiting their confirms together."""


def memory_footprint(count: int) -> dict[str, float]:
    """Bytes a full memory takes, per entry, with realistic ids, names and reasons."""
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    memory = CancellationMemory()
    for n in range(count):
        memory.remember(Cancellation.now(f"sub-{n:07d}-lab3", "instructor@lab-host", "resubmitted"))
    full = tracemalloc.get_traced_memory()[0]
    for n in range(count):
        memory.remember(Cancellation.now(f"more-{n:07d}-lab3", "instructor@lab-host", "again"))
    after = tracemalloc.get_traced_memory()[0]
    started = time.perf_counter()
    for n in range(100_000):
        memory.lookup(f"sub-{n:07d}-lab4")
    lookup_ns = (time.perf_counter() - started) / 100_000 * 1e9
    tracemalloc.stop()
    del before
    return {
        "entries": len(memory),
        "limit": DEFAULT_MAX_ENTRIES,
        "mib_full": round(full / 2**20, 1),
        "mib_after_twice_the_limit": round(after / 2**20, 1),
        "bytes_per_entry": round(full / max(1, len(memory))),
        "lookup_ns": round(lookup_ns),
    }


def flood(
    url: str, exchange: str, count: int, prefix: str, batch: int, rate: float, result: Any
) -> None:
    """Process target: publish `count` confirmed cancels of tasks nobody runs, `batch` task
    ids to a message (1000: what one `ulos-py cancel` of many ids sends; 1: what as many
    separate commands or tracker calls send), at most `rate` messages a second (0: as fast
    as the broker confirms them)."""

    def body(start: int) -> bytes:
        now = Cancellation.now("-", "flood@bench", "flood")  # one who, why and when a batch
        made = [
            Cancellation(f"{prefix}-gone-{n:07d}", now.by, now.reason, now.at)
            for n in range(start, min(count, start + batch))
        ]
        return json.dumps(made[0].body() if len(made) == 1 else batch_body(made)).encode()

    async def run() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            target = await channel.get_exchange(exchange)
            started, cpu = time.monotonic(), time.process_time()
            starts = list(range(0, count, batch))
            step = FLOOD_IN_FLIGHT if not rate else max(1, round(rate / 10))  # 10 steps a second
            for first in range(0, len(starts), step):
                await asyncio.gather(
                    *(
                        target.publish(aio_pika.Message(body(start), delivery_mode=2), "")
                        for start in starts[first : first + step]
                    )
                )
                if rate:  # on schedule, not faster
                    ahead = started + (first + step) / rate - time.monotonic()
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            result.send((time.monotonic() - started, time.process_time() - cpu))

    asyncio.run(run())


class CpuTrace:
    """A process's CPU seconds sampled every `period` seconds, to read any window of it."""

    def __init__(self, pid: int, period: float = 0.25) -> None:
        self._pid = pid
        self._period = period
        self.samples: list[tuple[float, float]] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
        self.samples.append((time.monotonic(), cpu_seconds(self._pid)))

    async def _run(self) -> None:
        while True:
            self.samples.append((time.monotonic(), cpu_seconds(self._pid)))
            await asyncio.sleep(self._period)

    def between(self, start: float, end: float) -> float:
        """CPU seconds used from `start` to `end` (the nearest samples inside the window)."""
        inside = [cpu for at, cpu in self.samples if start <= at <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0


def load_average() -> list[float]:
    return [round(x, 1) for x in os.getloadavg()]


class Bench:
    def __init__(self, args: argparse.Namespace, broker: Broker, ftp: Ftp, tmp: Path) -> None:
        self.args = args
        self.broker = broker
        self.ftp = ftp
        self.tmp = tmp
        self.topology = Topology(f"bench-{uuid.uuid4().hex[:8]}")
        self.cancel_exchange = self.topology.queue("cancellations")
        self.cancel_stream = self.topology.queue("cancel-stream")
        self.zip = make_zip(1)
        self.round = 0

    def node_env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("MESSAGE_BROKER_", "REMOTE_STORAGE_", "ULOS_"))
        }
        env.update(
            MESSAGE_BROKER_HOST=self.broker.host,
            MESSAGE_BROKER_PORT=str(self.broker.port),
            MESSAGE_BROKER_USERNAME=self.broker.username,
            MESSAGE_BROKER_PASSWORD=self.broker.password,
            MESSAGE_BROKER_LOGS_EXCHANGE=self.topology.logs,
            MESSAGE_BROKER_LOGS_ROUTING_KEY=LOGS_KEY,
            MESSAGE_BROKER_CRASH_EXCHANGE=self.topology.crashes,
            MESSAGE_BROKER_CRASH_ROUTING_KEY=CRASH_KEY,
            MESSAGE_BROKER_CONSUMPTION_QUEUE=self.topology.queue("input"),
            MESSAGE_BROKER_PREFETCH_COUNT="20",
            REMOTE_STORAGE_HOST=self.ftp.host,
            REMOTE_STORAGE_PORT=str(self.ftp.port),
            REMOTE_STORAGE_USERNAME=FTP_USER,
            REMOTE_STORAGE_PASSWORD=FTP_PASSWORD,
            ULOS_NODE_ID=f"{self.topology.prefix}-node",
            ULOS_EXECUTORS_FILE=str(REGISTRY),
            ULOS_WORK_DIR=str(self.tmp / "work"),
            ULOS_LOG_FORMAT="json",
            ULOS_LOG_LEVEL="info",
            ULOS_PROCESSES="1",
            ULOS_CANCEL_EXCHANGE=self.cancel_exchange,
            ULOS_CANCEL_STREAM=self.cancel_stream,
        )
        return env

    async def start_node(self, channel: aio_pika.abc.AbstractChannel) -> tuple[NodeProcess, float]:
        """The node, once it consumes; and how long it took (reading the stream included)."""
        started = time.monotonic()
        node = await NodeProcess.start(self.node_env(), self.tmp / f"node-{self.round}.log")
        underlay = await channel.get_underlay_channel()
        while True:
            declared = await underlay.queue_declare(self.topology.queue("input"), passive=True)
            if declared.consumer_count:
                return node, time.monotonic() - started
            if node.exited():
                raise RuntimeError(f"the node stopped: see {node.log_path}")
            await asyncio.sleep(0.05)

    async def run_tasks(
        self, channel: aio_pika.abc.AbstractChannel, node: NodeProcess, with_flood: bool
    ) -> dict[str, Any]:
        """Publish the tasks (the queue fills faster than the node drains it), count them in
        `done`; with a flood, the rate counts only arrivals while the flood ran."""
        self.round += 1
        label = f"r{self.round}"
        paths = place_zips(self.ftp.root, label, self.args.tasks, self.zip)
        bodies = [
            json.dumps(self.topology.task(label, i, path)).encode() for i, path in enumerate(paths)
        ]
        done = await channel.get_queue(self.topology.queue("done"))
        arrivals: list[float] = []
        all_done, first_arrival = asyncio.Event(), asyncio.Event()

        async def arrived(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            arrivals.append(time.monotonic())
            first_arrival.set()
            if len(arrivals) == len(bodies):
                all_done.set()

        tag = await done.consume(arrived, no_ack=True)
        rss_before, cpu_before = rss_mib(node.pid), cpu_seconds(node.pid)
        load_before = load_average()
        trace = CpuTrace(node.pid)
        trace.start()
        await publish_tasks(channel, self.topology, bodies)
        flood_window: tuple[float, float] | None = None
        flood_cpu = None
        if with_flood:
            await first_arrival.wait()
            ctx = multiprocessing.get_context("spawn")
            receiver, sender = ctx.Pipe(duplex=False)
            began = time.monotonic()
            process = ctx.Process(
                target=flood,
                args=(
                    self.broker.url,
                    self.cancel_exchange,
                    self.args.cancels,
                    self.topology.prefix,
                    self.args.batch,
                    self.args.flood_rate,
                    sender,
                ),
            )
            process.start()
            await asyncio.to_thread(process.join)
            if not receiver.poll():
                raise RuntimeError(f"the flood publisher failed (exit code {process.exitcode})")
            seconds, flood_cpu = receiver.recv()
            flood_window = (began, began + seconds)
        await asyncio.wait_for(all_done.wait(), 600)
        await done.cancel(tag)
        await asyncio.sleep(1)  # the node settles what it heard
        await trace.stop()
        rss_after, cpu_after = rss_mib(node.pid), cpu_seconds(node.pid)
        first, last = arrivals[0], arrivals[-1]
        # A batched flood is over in a moment: its cost shows over the whole phase.
        window = flood_window if flood_window and self.args.batch == 1 else (first, last)
        inside = [t for t in arrivals if window[0] <= t <= window[1]]
        span = min(window[1], last) - max(window[0], first)
        both = (max(window[0], first), min(window[1], last))
        window_cpu = trace.between(*both)
        result: dict[str, Any] = {
            "tasks": len(arrivals),
            "rate": round(len(inside) / span, 1) if span > 0 else None,
            "node_cpu_per_task_ms": round(window_cpu / len(inside) * 1000, 2) if inside else None,
            "rss_before_mib": rss_before,
            "rss_after_mib": rss_after,
            "node_cpu_s": round(cpu_after - cpu_before, 2),
            "load_average": [load_before, load_average()],
        }
        if flood_window is not None:
            result["flood_seconds"] = round(flood_window[1] - flood_window[0], 1)
            result["flood_messages_per_s"] = round(
                -(-self.args.cancels // self.args.batch) / (flood_window[1] - flood_window[0])
            )
            result["flood_publisher_cpu_s"] = round(flood_cpu or 0, 1)
            result["tasks_during_flood"] = len(inside)
            result["tasks_finished_before_flood_ended"] = last < flood_window[1]
        return result


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "memory": memory_footprint(args.cancels),
        "flood_cancels": args.cancels,
        "ids_per_message": args.batch,
        "flood_rate_limit": args.flood_rate or None,
    }
    say(f"memory: {report['memory']}")
    broker = Broker.parse(args.broker_url)
    async with AsyncExitStack() as stack:
        tmp = Path(tempfile.mkdtemp(prefix="ulos-cancel-bench-"))
        stack.callback(shutil.rmtree, tmp, ignore_errors=True)
        ftp = await stack.enter_async_context(ftp_server(tmp / "ftp", "async"))
        bench = Bench(args, broker, ftp, tmp)
        connection = await aio_pika.connect(broker.url)
        stack.push_async_callback(connection.close)
        channel = await connection.channel()
        await declare_topology(channel, bench.topology)
        stack.push_async_callback(delete_topology, broker, bench.topology)
        await declare_cancellations(channel, bench.cancel_exchange, bench.cancel_stream)

        async def forget_cancellations() -> None:
            with suppress(aio_pika.exceptions.AMQPError):
                extra = await connection.channel()
                await extra.queue_delete(bench.cancel_stream)
                await extra.exchange_delete(bench.cancel_exchange)

        stack.push_async_callback(forget_cancellations)

        node, _ = await bench.start_node(channel)
        stack.push_async_callback(node.stop)  # also on an error (stopping twice is harmless)
        report["quiet"] = await bench.run_tasks(channel, node, with_flood=False)
        say(f"quiet: {report['quiet']}")
        report["flood"] = await bench.run_tasks(channel, node, with_flood=True)
        say(f"flood: {report['flood']}")
        await node.stop()
        if not args.skip_restart:
            node, start_seconds = await bench.start_node(channel)
            stack.push_async_callback(node.stop)
            report["restarted"] = await bench.run_tasks(channel, node, with_flood=False)
            report["restarted"]["start_seconds"] = round(start_seconds, 1)
            say(f"restarted: {report['restarted']}")
            report["restarted"]["cancellations_known"] = known_count(node.log_path)
            await node.stop()
    report["verdicts"] = verdicts(report)
    return report


def known_count(log_path: Path) -> int | None:
    for line in log_path.read_text().splitlines():
        with suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "cancellations_known":
                return int(record["count"])
    return None


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """Each phase against the quiet one: the rate, and the node's CPU per task (both over
    the window in which the flood and the tasks ran together)."""
    quiet = report["quiet"]
    out: dict[str, Any] = {}
    phases = [p for p in ("flood", "restarted") if p in report]
    for phase in phases:
        rate, cpu = report[phase]["rate"], report[phase]["node_cpu_per_task_ms"]
        slowdown = 1 - rate / quiet["rate"] if quiet["rate"] and rate else None
        out[f"{phase}_slowdown"] = None if slowdown is None else round(slowdown, 3)
        out[f"{phase}_rate_ok"] = slowdown is not None and slowdown <= MAX_SLOWDOWN
        extra = (
            cpu / quiet["node_cpu_per_task_ms"] - 1
            if cpu and quiet["node_cpu_per_task_ms"]
            else None
        )
        out[f"{phase}_cpu_per_task_extra"] = None if extra is None else round(extra, 3)
        out[f"{phase}_cpu_ok"] = extra is not None and extra <= MAX_SLOWDOWN
    per_task = quiet["node_cpu_s"] / quiet["tasks"]
    spent = report["flood"]["node_cpu_s"] - per_task * report["flood"]["tasks"]
    messages = -(-report["flood_cancels"] // report["ids_per_message"])
    out["node_cpu_per_message_us"] = round(max(0.0, spent) / messages * 1e6) if messages else None
    base = quiet["rss_before_mib"] or 0
    peak = max(report[p]["rss_after_mib"] or 0 for p in phases)
    out["rss_growth_mib"] = round(peak - base, 1)
    out["rss_ok"] = peak - base <= MEMORY_LIMIT_MIB
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--tasks", type=int, default=1500)
    parser.add_argument("--cancels", type=int, default=100_000)
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="task ids per cancel message: 1 (default) = one message per cancel, as from "
        "separate commands or tracker calls; 1000 = what one `ulos-py cancel` of many ids sends",
    )
    parser.add_argument(
        "--flood-rate",
        type=float,
        default=0,
        help="cancel messages a second at most (0, the default: as fast as the broker takes them)",
    )
    parser.add_argument("--skip-restart", action="store_true", help="no restarted-node phase")
    parser.add_argument("--json", action="store_true", help="JSON on stdout")
    args = parser.parse_args(argv)
    report = asyncio.run(run(args))
    print(json.dumps(report, indent=2 if not args.json else None))
    v = report["verdicts"]
    ok = [v[k] for k in v if k.endswith("_ok")]
    return 0 if all(ok) else 1


if __name__ == "__main__":
    sys.exit(main())
