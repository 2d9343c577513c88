#!/usr/bin/env python
"""A flood of cancellations against a real `ulos-py node`: does it slow the node's tasks, and
how much memory does the node's memory of cancellations take? (SPEC §8, issue point 7)

    python benchmarks/cancel_flood.py [--cancels 100000] [--cycles 3] [--flood-rate 0] [--json]
    python benchmarks/cancel_flood.py --cancels 20000 --skip-restart   # ~2-3 minutes

1. In process: a `CancellationMemory` at its default limit, filled with `--cancels` and then
   as many again: its size stays at the limit; bytes per entry by tracemalloc.
2. A real node (one process, prefetch 20, built-in `skip` stage, 10 KiB zips over FTP) fed
   tasks without a pause (`--depth` waiting or running at all times), through alternating
   windows, `--cycles` times, and one quiet window more at the end:
   - quiet: `--quiet-seconds` with no cancel in sight;
   - decoy: another process publishes `--cancels`/`--cycles` cancels to a second exchange
     and stream that the node does not read: the broker and the publisher work as in a
     flood, the node reads nothing (what the flood costs the machine, not the node);
   - flood: the same cancels to the node's own exchange and stream, which the node reads;
   each followed by `--settle` seconds not counted (a flood's last messages, still read).
   Cancels are confirmed, `--batch` ids to a message, at most `--flood-rate` messages a
   second (0: as fast as the broker confirms them).
   - restarted: a new node that reads every flood from the stream at start, then a quiet
     window with a full memory.
   Per window: tasks done and their rate, and the CPU seconds (from /proc) of the node, the
   broker, the publisher, the FTP server and this harness; the node's RSS every 0.5 s.

Verdicts compare each decoy and flood window with the mean of the quiet windows either side
of its cycle (load drifts: neighbours are the fairest baseline), as medians over the cycles
with their range: the node's CPU per task (what the flood costs the node itself, robust to
other processes on the machine) and its rate, each within 10 %; and the node's RSS growth
within what the README states. Quiet against the next quiet window gives the noise floor of
both figures on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
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
    say,
)
from node_throughput import REGISTRY, NodeProcess
from proc_probes import broker_pid, cpu_seconds, host_cpu, rss_mib

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
    return {
        "entries": len(memory),
        "limit": DEFAULT_MAX_ENTRIES,
        "mib_full": round(full / 2**20, 1),
        "mib_after_twice_the_limit": round(after / 2**20, 1),
        "bytes_per_entry": round(full / max(1, len(memory))),
        "lookup_ns": round(lookup_ns),
    }


async def publish_flood(
    exchange: aio_pika.abc.AbstractExchange, count: int, prefix: str, batch: int, rate: float
) -> float:
    """Publish `count` confirmed cancels of tasks nobody runs, `batch` task ids to a message
    (1000: what one `ulos-py cancel` of many ids sends; 1: what as many separate commands or
    programs send), at most `rate` messages a second (0: as fast as the broker confirms
    them); the seconds it took."""

    def body(start: int) -> bytes:
        now = Cancellation.now("-", "flood@bench", "flood")  # one who, why and when a batch
        made = [
            Cancellation(f"{prefix}-gone-{n:07d}", now.by, now.reason, now.at)
            for n in range(start, min(count, start + batch))
        ]
        return json.dumps(made[0].body() if len(made) == 1 else batch_body(made)).encode()

    started = time.monotonic()
    starts = list(range(0, count, batch))
    step = FLOOD_IN_FLIGHT if not rate else max(1, round(rate / 10))  # 10 steps a second
    for first in range(0, len(starts), step):
        await asyncio.gather(
            *(
                exchange.publish(aio_pika.Message(body(start), delivery_mode=2), "")
                for start in starts[first : first + step]
            )
        )
        if rate:  # on schedule, not faster
            ahead = started + (first + step) / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
    return time.monotonic() - started


def publisher_main(url: str, orders: Connection) -> None:
    """Process target: one connection for the whole run; each order (exchange, count, prefix,
    batch, rate) is a flood, answered with its seconds; None ends it."""

    async def run() -> None:
        connection = await aio_pika.connect(url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            while (order := await asyncio.to_thread(orders.recv)) is not None:
                name, count, prefix, batch, rate = order
                exchange = await channel.get_exchange(name, ensure=False)
                orders.send(await publish_flood(exchange, count, prefix, batch, rate))

    asyncio.run(run())


class Feeder:
    """Keeps `depth` tasks waiting or running on the node at all times, each on a zip path of
    its own; a path is used again (its zip written afresh: the node adds its output to it)
    once its task has come out at `done`."""

    def __init__(self, topology: Topology, root: Path, data: bytes, depth: int) -> None:
        self.topology = topology
        self.root = root
        self.data = data
        self.depth = depth
        folder = root / "bench" / "flood"
        folder.mkdir(parents=True, exist_ok=True)
        self.free = [f"/bench/flood/task-{i:05d}.zip" for i in range(2 * depth)]
        for path in self.free:
            self._restore(path)
        self.busy: dict[str, str] = {}
        self.arrivals: list[float] = []
        self.published = 0

    def _restore(self, path: str) -> None:
        (self.root / path.lstrip("/")).write_bytes(self.data)

    async def run(self, channel: aio_pika.abc.AbstractChannel) -> None:
        exchange = await channel.get_exchange(self.topology.processing, ensure=False)
        while True:
            batch = []
            while len(self.busy) < self.depth and self.free:
                path = self.free.pop()
                task = self.topology.task("t", self.published, path)
                self.published += 1
                self.busy[task["taskId"]] = path
                batch.append(json.dumps(task).encode())
            await asyncio.gather(
                *(
                    exchange.publish(
                        aio_pika.Message(body, content_type="application/json", delivery_mode=2),
                        self.topology.stage,
                    )
                    for body in batch
                )
            )
            await asyncio.sleep(0.1)

    async def arrived(self, message: aio_pika.abc.AbstractIncomingMessage) -> None:
        self.arrivals.append(time.monotonic())
        path = self.busy.pop(json.loads(message.body)["taskId"], None)
        if path is not None:
            self._restore(path)
            self.free.append(path)

    def done_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.arrivals if start <= at < end)


@dataclass
class Processes:
    """The processes whose CPU each window reads (0: not known, read as no CPU)."""

    node: int
    broker: int
    publisher: int
    ftp: int
    harness: int = field(default_factory=os.getpid)

    def cpu(self) -> dict[str, float]:
        return {name: cpu_seconds(pid) if pid else 0.0 for name, pid in vars(self).items()}


class RssWatch:
    """The node's RSS every 0.5 s: its peak over the run."""

    def __init__(self) -> None:
        self.pid = 0
        self.peak = 0.0
        self.first: float | None = None

    async def run(self) -> None:
        while True:
            rss = rss_mib(self.pid) if self.pid else None
            if rss is not None:
                self.first = rss if self.first is None else self.first
                self.peak = max(self.peak, rss)
            await asyncio.sleep(0.5)


def load_average() -> float:
    return round(os.getloadavg()[0], 1)


class Bench:
    def __init__(self, args: argparse.Namespace, broker: Broker, ftp: Ftp, tmp: Path) -> None:
        self.args = args
        self.broker = broker
        self.ftp = ftp
        self.tmp = tmp
        self.topology = Topology(f"bench-{uuid.uuid4().hex[:8]}")
        self.cancel_exchange = self.topology.queue("cancellations")
        self.cancel_stream = self.topology.queue("cancel-stream")
        self.decoy_exchange = self.topology.queue("decoy-cancellations")
        self.decoy_stream = self.topology.queue("decoy-stream")
        self.feeder = Feeder(self.topology, ftp.root, make_zip(1), args.depth)
        self.rss = RssWatch()
        self.windows: list[dict[str, Any]] = []
        self.nodes = 0

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
        self.nodes += 1
        node = await NodeProcess.start(self.node_env(), self.tmp / f"node-{self.nodes}.log")
        underlay = await channel.get_underlay_channel()
        while True:
            declared = await underlay.queue_declare(self.topology.queue("input"), passive=True)
            if declared.consumer_count:
                self.rss.pid = node.pid
                return node, time.monotonic() - started
            if node.exited():
                raise RuntimeError(f"the node stopped: see {node.log_path}")
            await asyncio.sleep(0.05)

    async def declare_streams(
        self, connection: aio_pika.abc.AbstractConnection, stack: AsyncExitStack
    ) -> None:
        """The node's exchange and stream, and the decoy's; deleted with `stack`."""
        pairs = (
            (self.cancel_exchange, self.cancel_stream),
            (self.decoy_exchange, self.decoy_stream),
        )
        channel = await connection.channel()
        for exchange, stream in pairs:
            await declare_cancellations(channel, exchange, stream)

        async def forget() -> None:
            with suppress(aio_pika.exceptions.AMQPError):
                extra = await connection.channel()
                for exchange, stream in pairs:
                    await extra.queue_delete(stream)
                    await extra.exchange_delete(exchange)

        stack.push_async_callback(forget)

    async def window(self, kind: str, processes: Processes, orders: Connection | None) -> None:
        """One window: `quiet` sleeps, `decoy` and `flood` publish this cycle's cancels (to
        the exchange the node does not read, or to its own), for at least as long."""
        start, cpu, load, host = time.monotonic(), processes.cpu(), load_average(), host_cpu()
        messages = 0
        if kind == "quiet":
            await asyncio.sleep(self.args.quiet_seconds)
        else:
            assert orders is not None
            count = -(-self.args.cancels // self.args.cycles)
            exchange = self.cancel_exchange if kind == "flood" else self.decoy_exchange
            prefix = f"{self.topology.prefix}-{kind}{len(self.windows)}"
            orders.send((exchange, count, prefix, self.args.batch, self.args.flood_rate))
            if not await asyncio.to_thread(orders.poll, 3600):
                raise RuntimeError("the flood publisher did not answer")
            orders.recv()
            messages = -(-count // self.args.batch)
            # A short flood (a batched one is over in a second) is judged over a window as
            # long as a quiet one: its cost spread over that much work, not over a moment.
            await asyncio.sleep(max(0.0, start + self.args.quiet_seconds - time.monotonic()))
        end, used, host_after = time.monotonic(), processes.cpu(), host_cpu()
        spent = {name: round(used[name] - cpu[name], 2) for name in used}
        busy, total = host_after[0] - host[0], host_after[1] - host[1]
        tasks = self.feeder.done_between(start, end)
        seconds = end - start
        entry: dict[str, Any] = {
            "kind": kind,
            "seconds": round(seconds, 1),
            "tasks": tasks,
            "rate": round(tasks / seconds, 1),
            "node_cpu_per_task_ms": round(spent["node"] / tasks * 1000, 2) if tasks else None,
            "cpu_s": spent,
            "load": [load, load_average()],
            # of both cores: all busy, and the part no process of this run used
            "host_busy_percent": round(100 * busy / total, 1) if total else None,
            "others_percent": round(100 * max(0.0, busy - sum(spent.values())) / total, 1)
            if total
            else None,
        }
        if messages:
            entry["messages"] = messages
            entry["messages_per_s"] = round(messages / seconds)
        if kind != "quiet":  # the node may still read the flood's last messages
            settle, before = time.monotonic(), cpu_seconds(processes.node)
            await asyncio.sleep(self.args.settle)
            entry["settle_node_cpu_s"] = round(cpu_seconds(processes.node) - before, 2)
            entry["settle_tasks"] = self.feeder.done_between(settle, time.monotonic())
        self.windows.append(entry)
        say(f"{kind}: {entry}")


Window = dict[str, Any]


def start_publisher(url: str, stack: AsyncExitStack) -> tuple[Connection, int]:
    """The flood publisher's process, stopped with `stack`: its end of the pipe, its pid."""
    ctx = multiprocessing.get_context("spawn")
    orders, their_end = ctx.Pipe()
    publisher = ctx.Process(target=publisher_main, args=(url, their_end), daemon=True)
    publisher.start()

    def stop() -> None:
        with suppress(OSError):
            orders.send(None)
        publisher.join(30)
        if publisher.is_alive():
            publisher.kill()

    stack.callback(stop)
    return orders, publisher.pid or 0


def cycles_of(windows: list[Window]) -> Iterator[tuple[Window, Window | None, Window, Window]]:
    """(quiet before, decoy or None, flood, quiet after) for each cycle."""
    quiet = [i for i, w in enumerate(windows) if w["kind"] == "quiet"]
    for before, after in itertools.pairwise(quiet):
        inside = {w["kind"]: w for w in windows[before + 1 : after]}
        if "flood" in inside:
            yield windows[before], inside.get("decoy"), inside["flood"], windows[after]


def spread(values: list[float]) -> dict[str, float] | None:
    """Median and range, rounded: what every figure over the cycles is quoted as."""
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def verdicts(report: dict[str, Any]) -> dict[str, Any]:
    """Each decoy and flood window against the mean of its cycle's quiet windows."""
    cpu_extra: dict[str, list[float]] = {"decoy": [], "flood": []}
    slowdown: dict[str, list[float]] = {"decoy": [], "flood": []}
    per_message, core_share, flood_vs_decoy, cpu_vs_decoy = [], [], [], []
    for before, decoy, flood, after in cycles_of(report["windows"]):
        if not (before["tasks"] and after["tasks"] and flood["tasks"]):
            continue  # a window without a task done says nothing of their cost
        quiet_cpt = (before["node_cpu_per_task_ms"] + after["node_cpu_per_task_ms"]) / 2
        quiet_rate = (before["rate"] + after["rate"]) / 2
        for window in (decoy, flood):
            if window is None or not window["tasks"]:
                continue
            cpu_extra[window["kind"]].append(window["node_cpu_per_task_ms"] / quiet_cpt - 1)
            slowdown[window["kind"]].append(1 - window["rate"] / quiet_rate)
        # What the node spent on the cancels: its CPU beyond its tasks' at the quiet cost.
        spent = flood["cpu_s"]["node"] + flood["settle_node_cpu_s"]
        spent -= (flood["tasks"] + flood["settle_tasks"]) * quiet_cpt / 1000
        per_message.append(max(0.0, spent) / flood["messages"] * 1e6)
        core_share.append(max(0.0, spent) / (flood["seconds"] + report["settle_seconds"]))
        if decoy is not None and decoy["rate"] and flood["tasks"]:
            flood_vs_decoy.append(1 - flood["rate"] / decoy["rate"])
            cpu_vs_decoy.append(flood["node_cpu_per_task_ms"] / decoy["node_cpu_per_task_ms"] - 1)
    quiet = [w for w in report["windows"] if w["kind"] == "quiet" and w["tasks"]]
    noise_cpu = [
        b["node_cpu_per_task_ms"] / a["node_cpu_per_task_ms"] - 1
        for a, b in itertools.pairwise(quiet)
    ]
    noise_rate = [1 - b["rate"] / a["rate"] for a, b in itertools.pairwise(quiet)]
    out: dict[str, Any] = {
        "flood_cpu_per_task_extra": spread(cpu_extra["flood"]),
        "flood_rate_slowdown": spread(slowdown["flood"]),
        "decoy_cpu_per_task_extra": spread(cpu_extra["decoy"]),
        "decoy_rate_slowdown": spread(slowdown["decoy"]),
        "flood_rate_slowdown_against_decoy": spread(flood_vs_decoy),
        "flood_cpu_per_task_extra_against_decoy": spread(cpu_vs_decoy),
        "noise_cpu_per_task_quiet_to_quiet": spread(noise_cpu),
        "noise_rate_quiet_to_quiet": spread(noise_rate),
        "node_cpu_per_message_us": spread(per_message),
        "node_core_share_on_cancels": spread(core_share),
    }
    extra, slow = out["flood_cpu_per_task_extra"], out["flood_rate_slowdown"]
    out["cpu_ok"] = extra is not None and extra["median"] <= MAX_SLOWDOWN
    out["rate_ok"] = slow is not None and slow["median"] <= MAX_SLOWDOWN
    if "restarted" in report:
        restarted = report["restarted"]
        quiet_cpt = statistics.mean(w["node_cpu_per_task_ms"] for w in quiet)
        out["restarted_cpu_per_task_extra"] = round(
            restarted["node_cpu_per_task_ms"] / quiet_cpt - 1, 3
        )
    out["rss_growth_mib"] = round(report["rss_peak_mib"] - report["rss_first_mib"], 1)
    out["rss_ok"] = out["rss_growth_mib"] <= MEMORY_LIMIT_MIB
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "memory": memory_footprint(min(args.cancels, DEFAULT_MAX_ENTRIES)),
        "flood_cancels": args.cancels,
        "cycles": args.cycles,
        "ids_per_message": args.batch,
        "flood_rate_limit": args.flood_rate or None,
        "settle_seconds": args.settle,
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
        await bench.declare_streams(connection, stack)
        orders, publisher_pid = start_publisher(broker.url, stack)
        background = [asyncio.create_task(bench.rss.run())]
        done = await channel.get_queue(bench.topology.queue("done"))
        tag = await done.consume(bench.feeder.arrived, no_ack=True)
        background.append(asyncio.create_task(bench.feeder.run(channel)))

        async def stop_background() -> None:
            with suppress(aio_pika.exceptions.AMQPError):
                await done.cancel(tag)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

        stack.push_async_callback(stop_background)

        node, _ = await bench.start_node(channel)
        stack.push_async_callback(node.stop)  # also on an error (stopping twice is harmless)
        processes = Processes(node.pid, broker_pid(broker.port) or 0, publisher_pid, ftp.pid)
        if not processes.broker:
            say("the broker's process was not found: its CPU reads as 0")
        await asyncio.sleep(args.settle)  # the node's first tasks: its start is not measured
        kinds = (("decoy",) if not args.no_decoy else ()) + ("flood",)
        for _ in range(args.cycles):
            await bench.window("quiet", processes, orders)
            for kind in kinds:
                await bench.window(kind, processes, orders)
        await bench.window("quiet", processes, orders)
        report["windows"] = bench.windows
        await node.stop()
        if not args.skip_restart:
            node, start_seconds = await bench.start_node(channel)
            stack.push_async_callback(node.stop)
            processes.node = node.pid
            await asyncio.sleep(args.settle)
            await bench.window("quiet", processes, orders)
            report["restarted"] = bench.windows.pop()
            report["restarted"]["start_seconds"] = round(start_seconds, 1)
            report["restarted"]["cancellations_known"] = known_count(node.log_path)
            await node.stop()
        report["rss_first_mib"] = bench.rss.first
        report["rss_peak_mib"] = bench.rss.peak
    report["verdicts"] = verdicts(report)
    return report


def known_count(log_path: Path) -> int | None:
    for line in log_path.read_text().splitlines():
        with suppress(ValueError):
            record = json.loads(line)
            if record.get("event") == "cancellations_known":
                return int(record["count"])
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--cancels", type=int, default=100_000, help="over all flood windows")
    parser.add_argument("--cycles", type=int, default=3, help="quiet-decoy-flood cycles")
    parser.add_argument("--quiet-seconds", type=float, default=10.0)
    parser.add_argument("--settle", type=float, default=2.0, help="seconds after a flood")
    parser.add_argument("--depth", type=int, default=200, help="tasks waiting or running")
    parser.add_argument("--no-decoy", action="store_true", help="no decoy windows")
    parser.add_argument(
        "--batch",
        type=int,
        default=1,
        help="task ids per cancel message: 1 (default) = one message per cancel, as from "
        "separate commands or programs; 1000 = what one `ulos-py cancel` of many ids sends",
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
    return 0 if all(v[k] for k in v if k.endswith("_ok")) else 1


if __name__ == "__main__":
    sys.exit(main())
