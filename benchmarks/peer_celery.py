#!/usr/bin/env python
"""A real `ulos-py node` against the same work done by a Celery app, as a Celery user writes it.

Both sides take tasks from a queue filled before they start, and per task download a 10 KB
zip of 20 files from the same FTP server, unpack it, run a no-op executor, pack, upload it
back, publish persistent log notices and one confirmed forward to the same exchanges, and
ack. Configurations, interleaved each round on the same broker, FTP server and zips:
ulos-py with one process (prefetch 1), Celery prefork -c 1, ulos-py --processes 2
(prefetch 1 each), Celery prefork -c 2, and ulos-py --processes 2 as shipped (the node's
default prefetch of 10 and FTP pool of 4: asyncio overlaps one task's waits with another's
work, which a prefork child cannot). Then 1 MB and 100 MB zips through the node against
a bare loop on the same file (aioftp download, read every entry, write the new archive,
upload). Only ratios carry over to another machine. See README.md here.

One run is not a verdict on a shared VM: by default the script runs itself `--runs 3` times,
each a separate invocation, prints every run, then each target's ratio per run, the median
(which decides), the spread, and the median of the clean runs; a run is flagged disturbed
when other processes took more than 5 % of the host CPU in a phase, or steal time passed 5 %.

    .venv/bin/python benchmarks/peer_celery.py [--tasks 1000] [--rounds 2] [--runs 3] [--out FILE]
    .venv/bin/python benchmarks/peer_celery.py --combine run1.json run2.json run3.json
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import itertools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import aio_pika
import aioftp
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from bench_fixtures import (
    FTP_PASSWORD,
    FTP_USER,
    LOGS_KEY,
    ZIP_FILES,
    Broker,
    Topology,
    declare_topology,
    delete_topology,
    ftp_server,
    make_incompressible_zip,
    make_zip,
    place_zips,
    publish_tasks,
    queue_depth,
    say,
    settled_depth,
)
from node_throughput import (
    Bench,
    DoneWatcher,
    NodeProcess,
    PhaseResult,
    inspect_node_log,
    node_env,
    quietly,
    run_and_report,
    start_profiler,
    stop_profiler,
    wait_for_done,
)
from proc_probes import (
    MachineSnapshot,
    broker_pids,
    cpu_seconds,
    listening_pids,
    proc_status_kib,
    process_tree,
)

REPO = Path(__file__).resolve().parents[1]
INSTALL_HINT = (
    "this benchmark needs Celery (the bench extra): .venv/bin/pip install -e '.[dev,bench]'"
)
ULOS_NOTICES_PER_TASK = 7  # received … forwarded, acked
CELERY_NOTICES_PER_TASK = 6  # celery_app.NOTICES_PER_TASK: no `acked` (see there)
CONFIGS = ("ulos-p1", "celery-c1", "ulos-p2", "celery-c2", "ulos-p2-default")
AS_SHIPPED = "-default"
"""A config suffix: the node with its own prefetch and FTP pool defaults, as an operator
starts it, rather than one task at a time per process like Celery's prefork children."""
RATE_TARGETS = {1: 1.3, 2: 1.2}  # ulos-py pN tasks/s over Celery cN, at least
LARGE_MB = (1, 100)
RSS_GROWTH_TARGET_MB = 50  # 100 MB zips: node peak RSS at most this much above 10 KB zips
LARGE_RATE_TARGET = 0.80  # 100 MB zips: node MB/s over bare aioftp MB/s, at least
DISTURBED_PERCENT = 5  # host CPU no process of the run used, above which a phase is noted
STEAL_PERCENT = 5  # CPU the hypervisor gave to other machines, above which a run is noted
WORKER_CPU_TARGET = 0.8  # ulos-py worker CPU per task over Celery's, at most
RUNS = 3  # separate invocations whose medians decide (--runs)
MB = 1_000_000
MIB = 1 << 20
CHUNK = 1 << 16


def celery_missing() -> bool:
    return importlib.util.find_spec("celery") is None


def node_has_processes_option() -> bool:
    """Whether this checkout's node has `--processes` (older ones run one process)."""
    result = subprocess.run(
        [*NodeProcess.command(), "--help"], capture_output=True, text=True, cwd=REPO, check=False
    )
    return "--processes" in result.stdout


# Process trees: Celery's prefork pool and a multi-process node are a parent and children


def tree_cpu(root: int) -> dict[int, float]:
    return {pid: cpu_seconds(pid) for pid in process_tree(root)}


def tree_peak_rss_mib(root: int) -> list[float]:
    """VmHWM of each process of the tree, the parent first."""
    peaks = (proc_status_kib(pid, "VmHWM") for pid in process_tree(root))
    return [round(kib / 1024, 1) for kib in peaks if kib is not None]


class TreeWatcher(DoneWatcher):
    """DoneWatcher that also reads the CPU of the worker's whole process tree."""

    def __init__(self, task_ids: set[str], hop: dict[str, str], pids: Callable[[], Any]) -> None:
        super().__init__(task_ids, hop, pids)
        self.tree_first: dict[int, float] = {}
        self.tree_last: dict[int, float] = {}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        before = len(self.seen)
        await super().on_message(message)
        if len(self.seen) == before:
            return
        root = self._pids()[0]
        if len(self.seen) == 1:
            self.tree_first = tree_cpu(root)
        if self.complete.is_set():
            self.tree_last = tree_cpu(root)

    def tree_seconds(self) -> float:
        return sum(cpu - self.tree_first.get(pid, 0.0) for pid, cpu in self.tree_last.items())


# One phase: a queue filled beforehand, one worker started, every task waited for


@dataclass
class PeerPhase(PhaseResult):
    """The node benchmark's phase record (`kind` is "ulos" or "celery"), plus what a process
    tree, the notices' steps and the large zips add."""

    processes: int = 1
    zip_bytes: int = 0
    host_cpu_ms_per_task: float | None = None
    run_cpu_ms_per_task: float | None = None
    peak_rss_mib_each: list[float] = field(default_factory=list)
    intervals_s: list[float] = field(default_factory=list)
    step_ms: dict[str, float] = field(default_factory=dict)
    expected_notices: int = 0
    worker_log_problems: list[str] = field(default_factory=list)

    def fill_tree_cpu(self, watcher: TreeWatcher) -> None:
        """Whole-tree worker CPU, host CPU per task, and what no process of ours used."""
        first, last = watcher.cpu_first, watcher.cpu_last
        if first is None or last is None or self.received < 2:
            return
        tasks = self.received - 1
        worker = watcher.tree_seconds()
        self.cpu_ms_per_task["worker"] = round(worker * 1000 / tasks, 2)
        busy = last.host_busy - first.host_busy
        self.host_cpu_ms_per_task = round(busy * 1000 / tasks, 2)
        ours = worker + sum(
            getattr(last, name) - getattr(first, name) for name in ("ftp", "broker", "own")
        )
        self.run_cpu_ms_per_task = round(ours * 1000 / tasks, 2)
        elapsed = last.host_total - first.host_total
        if elapsed > 0:
            self.foreign_cpu_percent = round(max(0.0, 100 * (busy - ours) / elapsed), 1)


@dataclass(frozen=True)
class Side:
    """How one configuration gets its tasks and starts its worker."""

    label: str
    kind: str  # "ulos" or "celery"
    processes: int
    input_queue: str
    notices_per_task: int
    enqueue: Callable[[list[dict[str, Any]]], Awaitable[None]]
    start: Callable[[Path], Awaitable[NodeProcess]]


@dataclass
class Peer:
    """The run's fixtures (the node benchmark's Bench) plus the Celery side's queue and app."""

    bench: Bench
    celery_queue: str
    celery: ModuleType
    has_processes: bool

    @property
    def topology(self) -> Topology:
        return self.bench.topology

    def queues(self) -> list[str]:
        return [q for q, _, _ in self.topology.bindings()] + [self.celery_queue]


def ulos_side(peer: Peer, processes: int, as_shipped: bool = False) -> Side:
    """`ulos-py node --processes N`: the node's default is one worker per core, so even
    N = 1 is said (a node older than the option is one process anyway). `as_shipped`
    leaves the prefetch count and FTP pool at the node's defaults (10 and 4)."""
    bench = peer.bench
    name = f"ulos-p{processes}{AS_SHIPPED if as_shipped else ''}"

    async def enqueue(tasks: list[dict[str, Any]]) -> None:
        await publish_tasks(bench.channel, bench.topology, [json.dumps(t).encode() for t in tasks])

    async def start(log_path: Path) -> NodeProcess:
        env = node_env(bench, connections=1)  # prefetch 1: one transfer at a time per process
        if as_shipped:
            del env["MESSAGE_BROKER_PREFETCH_COUNT"], env["ULOS_STORAGE_CONNECTIONS"]
        env["ULOS_WORK_DIR"] = str(bench.tmp / f"{name}-work")
        env["ULOS_NODE_ID"] = f"{bench.topology.prefix}-{name}"
        flag = ["--processes", str(processes)] if peer.has_processes else []
        return await NodeProcess.start(env, log_path, [*NodeProcess.command(), *flag])

    input_queue = bench.topology.queue("input")
    return Side(name, "ulos", processes, input_queue, ULOS_NOTICES_PER_TASK, enqueue, start)


def celery_env(bench: Bench, concurrency: int) -> dict[str, str]:
    """The Celery app's configuration: the node's variable names where they mean the same."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "BENCH_"))}
    env.update(
        CELERY_BROKER_URL=bench.broker.url,
        REMOTE_STORAGE_HOST=bench.ftp.host,
        REMOTE_STORAGE_PORT=str(bench.ftp.port),
        REMOTE_STORAGE_USERNAME=FTP_USER,
        REMOTE_STORAGE_PASSWORD=FTP_PASSWORD,
        MESSAGE_BROKER_LOGS_EXCHANGE=bench.topology.logs,
        MESSAGE_BROKER_LOGS_ROUTING_KEY=LOGS_KEY,
        BENCH_WORK_DIR=str(bench.tmp / f"celery-c{concurrency}-work"),
    )
    return env


def celery_side(peer: Peer, concurrency: int) -> Side:
    bench, app_module = peer.bench, peer.celery

    def send_all(tasks: list[dict[str, Any]]) -> None:
        """apply_async on the worker's queue, confirmed (the app's transport options)."""
        with app_module.app.producer_or_acquire() as producer:
            for task in tasks:
                app_module.process_task.apply_async(
                    args=[task], queue=peer.celery_queue, producer=producer
                )

    async def enqueue(tasks: list[dict[str, Any]]) -> None:
        await asyncio.to_thread(send_all, tasks)

    async def start(log_path: Path) -> NodeProcess:
        script = Path(sys.executable).parent / "celery"
        base = [str(script)] if script.is_file() else [sys.executable, "-m", "celery"]
        command = [
            *base,
            "-A",
            "benchmarks.celery_app",
            "worker",
            "--pool",
            "prefork",
            "-c",
            str(concurrency),
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "-Q",
            peer.celery_queue,
            "--hostname",
            f"{bench.topology.prefix}-c{concurrency}@%h",
        ]
        work_dir = bench.tmp / f"celery-c{concurrency}-work"
        work_dir.mkdir(exist_ok=True)
        return await NodeProcess.start(celery_env(bench, concurrency), log_path, command)

    return Side(
        f"celery-c{concurrency}",
        "celery",
        concurrency,
        peer.celery_queue,
        CELERY_NOTICES_PER_TASK,
        enqueue,
        start,
    )


async def prepare(
    peer: Peer, label: str, count: int, data: bytes
) -> tuple[set[str], list[dict[str, Any]]]:
    """Empty queues, the zip at `count` distinct FTP paths, the SPEC §2 tasks."""
    for name in peer.queues():
        queue = await peer.bench.channel.get_queue(name, ensure=False)
        await queue.purge()
    paths = await asyncio.to_thread(place_zips, peer.bench.ftp.root, label, count, data)
    tasks = [peer.topology.task(label, i, path) for i, path in enumerate(paths)]
    return {t["taskId"] for t in tasks}, tasks


async def run_phase(
    peer: Peer, side: Side, label: str, round_no: int, count: int, data: bytes
) -> PeerPhase:
    bench = peer.bench
    result = PeerPhase(label, side.label, round_no, side.kind, 1, count)
    result.processes, result.zip_bytes = side.processes, len(data)
    task_ids, tasks = await prepare(peer, label, count, data)
    await side.enqueue(tasks)
    say(f"{label}: {count} tasks queued, starting the worker")
    worker: NodeProcess | None = None
    watcher = TreeWatcher(
        task_ids,
        peer.topology.done_hop(),
        lambda: (worker.pid if worker else 0, bench.ftp.pid, bench.broker_pids),
    )
    done_queue = await bench.channel.get_queue(peer.topology.queue("done"), ensure=False)
    tag = await done_queue.consume(watcher.on_message, no_ack=True)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(quietly, done_queue.cancel(tag))
        started = time.perf_counter()
        worker = await side.start(bench.tmp / f"{label}.log")
        stack.push_async_callback(worker.stop)
        one_node = side.kind == "ulos" and side.processes == 1  # p2: the pid is the supervisor
        profiler = await start_profiler(bench, label, worker.pid) if one_node else None
        try:
            await wait_for_done(bench, watcher, worker, label)
        except RuntimeError as exc:
            result.error = str(exc)
        result.fill_timing(watcher, started)
        result.fill_tree_cpu(watcher)
        result.intervals_s = [round(b - a, 4) for a, b in itertools.pairwise(watcher.arrivals)]
        result.peak_rss_mib_each = tree_peak_rss_mib(worker.pid)
        result.peak_rss_mib = round(sum(result.peak_rss_mib_each), 1)
        result.exit_code = await worker.stop()
        await stop_profiler(profiler)
    if bench.broker_lost is None:
        await count_outcomes(peer, side, result)
    inspect_log(side, worker.log_path, result)
    await asyncio.to_thread(shutil.rmtree, bench.ftp.root / "bench" / label, True)
    say(f"{label}: {result.tasks_per_s:.1f} tasks/s, exit code {result.exit_code}")
    return result


STEPS = {  # a step: (notice that starts it, notice that ends it); Celery has no `acked`
    "download+unpack": ("received", "downloaded"),
    "execute": ("execution_started", "execution_finished"),
    "output+pack+upload": ("execution_finished", "uploaded"),
    "forward": ("uploaded", "forwarded"),
    "received→forwarded": ("received", "forwarded"),
    "ack": ("forwarded", "acked"),
}


async def drain_notices(channel: AbstractChannel, queue_name: str, count: int) -> list[bytes]:
    """The phase's log notices, taken off the queue after the phase (not measured)."""
    queue = await channel.get_queue(queue_name, ensure=False)
    bodies: list[bytes] = []
    complete = asyncio.Event()

    async def take(message: AbstractIncomingMessage) -> None:
        bodies.append(message.body)
        if len(bodies) >= count:
            complete.set()

    tag = await queue.consume(take, no_ack=True)
    with suppress(TimeoutError):
        await asyncio.wait_for(complete.wait(), 30)
    await queue.cancel(tag)
    return bodies


def step_ms(bodies: list[bytes]) -> dict[str, float]:
    """Median ms of each step per task, from the notices' timestamps (ms precision)."""
    stamps: dict[str, dict[str, datetime]] = {}
    for body in bodies:
        notice = json.loads(body)
        when = datetime.fromisoformat(notice["timestamp"].replace("Z", "+00:00"))
        stamps.setdefault(notice["taskId"], {})[notice["event"]] = when
    steps = {}
    for step, (start, end) in STEPS.items():
        spans = [
            (events[end] - events[start]).total_seconds() * 1000
            for events in stamps.values()
            if start in events and end in events
        ]
        if spans:
            steps[step] = round(statistics.median(spans), 1)
    return steps


async def count_outcomes(peer: Peer, side: Side, result: PeerPhase) -> None:
    channel = peer.bench.channel
    result.expected_notices = result.received * side.notices_per_task
    logs = peer.topology.queue("logs")
    result.log_notices = await settled_depth(channel, logs, result.expected_notices)
    result.crash_notices = await queue_depth(channel, peer.topology.queue("crashes"))
    result.left_in_input = await queue_depth(channel, side.input_queue)
    notices = await drain_notices(channel, logs, result.log_notices)
    result.step_ms = step_ms(notices)


def inspect_log(side: Side, path: Path, result: PeerPhase) -> None:
    """The node's JSON log for warnings; Celery's (level WARNING) for errors and tracebacks."""
    if side.kind == "ulos":
        inspect_node_log(path, result)
        return
    lines = path.read_text(errors="replace").splitlines()
    bad = [line for line in lines if "ERROR" in line or "Traceback" in line]
    result.log_warnings = len(bad)
    result.worker_log_problems = bad[:5]
    if bad or result.exit_code != 0 or result.error:
        say(f"--- last lines of the Celery worker's log ({path.name}) ---")
        for line in (bad or lines)[-15:]:
            say(f"  {line[:400]}")


# Large zips: MB/s through the node against a bare aioftp download+upload of the same file


def bare_archive_work(downloaded: Path, new: Path) -> None:
    """The archive work any node must do, at its leanest: read every entry (inflate, CRC),
    write the new archive (the entries copied as they are, plus an output file)."""
    with zipfile.ZipFile(downloaded) as zf:
        for info in zf.infolist():
            with zf.open(info) as entry:
                while entry.read(CHUNK):
                    pass
    shutil.copyfile(downloaded, new)
    with zipfile.ZipFile(new, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("output_bench_bare.txt", "bare loop: pass\n")


async def bare_transfers(bench: Bench, remote: str, reps: int) -> list[float]:
    """Seconds of each bare loop on one reused connection: download (to a file), the archive
    work of `bare_archive_work` in a thread, upload of the new archive."""
    local = bench.tmp / "bare-transfer.zip"
    new = bench.tmp / "bare-new.zip"
    copy = remote.replace(".zip", "-bare-copy.zip")
    client = aioftp.Client(socket_timeout=60, connection_timeout=30)
    await client.connect(bench.ftp.host, bench.ftp.port)
    await client.login(FTP_USER, FTP_PASSWORD)
    times = []
    try:
        for _ in range(reps):
            start = time.perf_counter()
            with local.open("wb") as out:
                async with client.download_stream(remote) as stream:
                    async for block in stream.iter_by_block(CHUNK):
                        out.write(block)
            await asyncio.to_thread(bare_archive_work, local, new)
            with new.open("rb") as source:
                async with client.upload_stream(copy) as stream:
                    while chunk := source.read(CHUNK):
                        await stream.write(chunk)
            times.append(time.perf_counter() - start)
    finally:
        client.close()
        local.unlink(missing_ok=True)
        new.unlink(missing_ok=True)
    return times


@dataclass
class LargeResult:
    size_mb: int
    zip_bytes: int
    tasks: int
    node_mb_per_s: list[float]
    bare_mb_per_s: list[float]
    node_peak_rss_mib: float | None
    phase: dict[str, Any]

    @property
    def ratio(self) -> float | None:
        if not self.node_mb_per_s or not self.bare_mb_per_s:
            return None
        return statistics.median(self.node_mb_per_s) / statistics.median(self.bare_mb_per_s)


async def run_large(peer: Peer, size_mb: int, tasks: int, seed: int) -> LargeResult:
    """Bare transfers, the node's tasks, bare again: the same file, the same minute."""
    data = await asyncio.to_thread(make_incompressible_zip, size_mb * MB, seed)
    label = f"large-{size_mb}mb"
    say(f"{label}: zip {len(data) / MB:.1f} MB; bare aioftp transfers, then the node")
    probe = (await asyncio.to_thread(place_zips, peer.bench.ftp.root, f"{label}-bare", 1, data))[0]
    reps = max(1, tasks - 1)
    before = await bare_transfers(peer.bench, probe, (reps + 1) // 2)
    phase = await run_phase(peer, ulos_side(peer, 1), label, 1, tasks, data)
    after = await bare_transfers(peer.bench, probe, reps // 2)
    await asyncio.to_thread(shutil.rmtree, peer.bench.ftp.root / "bench" / f"{label}-bare", True)
    moved = 2 * len(data) / MB  # down and up
    return LargeResult(
        size_mb,
        len(data),
        tasks,
        [round(moved / s, 1) for s in phase.intervals_s if s > 0],
        [round(moved / s, 1) for s in before + after],
        phase.peak_rss_mib,
        asdict(phase),
    )


# The run


def pick_sides(peer: Peer, configs: list[str]) -> list[Side]:
    sides = []
    for config in configs:
        kind, _, number = config.removesuffix(AS_SHIPPED).partition("-")
        n = int(number[1:])
        if kind == "ulos" and n > 1 and not peer.has_processes:
            say(f"{config}: skipped, this node has no --processes option yet")
            continue
        as_shipped = config.endswith(AS_SHIPPED)
        sides.append(ulos_side(peer, n, as_shipped) if kind == "ulos" else celery_side(peer, n))
    return sides


async def declare_celery_queue(channel: AbstractChannel, name: str) -> None:
    """What `-Q name` declares (a durable direct exchange and queue of that name), made
    before the tasks are sent so none is unroutable."""
    exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
    queue = await channel.declare_queue(name, durable=True)
    await queue.bind(exchange, name)


async def delete_celery_queue(broker: Broker, name: str) -> None:
    connection = await aio_pika.connect(broker.url)
    async with connection:
        channel = await connection.channel()
        with suppress(aio_pika.exceptions.AMQPError):
            await channel.queue_delete(name)
            await channel.exchange_delete(name)


def load_celery_app(broker: Broker) -> ModuleType:
    sys.path.insert(0, str(REPO))  # the worker imports it as benchmarks.celery_app too
    celery_app = importlib.import_module("benchmarks.celery_app")
    celery_app.app.conf.broker_url = broker.url
    return celery_app


async def run(args: argparse.Namespace) -> dict[str, Any]:
    broker = Broker.parse(args.broker_url)
    topology = Topology(f"bench-{uuid.uuid4().hex[:8]}")
    has_processes = await asyncio.to_thread(node_has_processes_option)
    phases: list[PeerPhase] = []
    large: list[LargeResult] = []
    started = time.monotonic()
    machine_before = MachineSnapshot.now()
    async with AsyncExitStack() as stack:
        tmp = Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="ulos-peer-", dir=args.tmp_dir))
        )
        ftp = await stack.enter_async_context(ftp_server(tmp / "ftp-root", "async"))
        connection = await aio_pika.connect(
            broker.url, client_properties={"connection_name": f"{topology.prefix} peer benchmark"}
        )
        stack.push_async_callback(connection.close)
        stack.push_async_callback(delete_topology, broker, topology)
        celery_queue = topology.queue("celery")
        stack.push_async_callback(delete_celery_queue, broker, celery_queue)
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, topology)
        await declare_celery_queue(channel, celery_queue)
        zip_data = make_zip(args.seed)
        broker_processes = listening_pids(broker.port) or broker_pids()
        bench = Bench(args, broker, topology, ftp, tmp, channel, zip_data, broker_processes)
        connection.close_callbacks.add(bench.on_broker_close)
        peer = Peer(bench, celery_queue, load_celery_app(broker), has_processes)
        stack.callback(peer.celery.app.close)
        say(
            f"broker {broker.host}:{broker.port}, FTP 127.0.0.1:{ftp.port}, names "
            f"{topology.prefix}.*, zip {len(zip_data)} bytes, node --processes: {has_processes}"
        )
        sides = pick_sides(peer, args.configs)
        for round_no in range(1, args.rounds + 1):
            for side in sides if round_no % 2 else sides[::-1]:
                label = f"{side.label}-r{round_no}"
                phases.append(await run_phase(peer, side, label, round_no, args.tasks, zip_data))
                if bench.broker_lost is not None:
                    break
            if bench.broker_lost is not None:
                break
        if args.large_tasks > 0 and bench.broker_lost is None:
            for size in args.large_sizes:
                large.append(await run_large(peer, size, args.large_tasks, args.seed))
    machine = machine_report(machine_before, MachineSnapshot.now())
    wall = time.monotonic() - started
    return build_report(args, zip_data, phases, large, has_processes, wall, machine)


def machine_report(before: MachineSnapshot, after: MachineSnapshot) -> dict[str, Any]:
    return {
        "loadavg_start": before.loadavg,
        "loadavg_end": after.loadavg,
        "steal_percent": after.steal_percent_since(before),
    }


# The report


def summarize(phases: list[PeerPhase]) -> dict[str, dict[str, Any]]:
    """Per configuration: tasks/s median (min, max), host CPU ms/task median, peak RSS."""
    by_config: dict[str, list[PeerPhase]] = {}
    for p in phases:
        if p.error is None:
            by_config.setdefault(p.config, []).append(p)
    summary = {}
    for config, runs in by_config.items():
        rates = [p.tasks_per_s for p in runs]
        cpu = [p.host_cpu_ms_per_task for p in runs if p.host_cpu_ms_per_task is not None]
        run_cpu = [p.run_cpu_ms_per_task for p in runs if p.run_cpu_ms_per_task is not None]
        worker = [p.cpu_ms_per_task.get("worker", 0.0) for p in runs]
        rss = [p.peak_rss_mib for p in runs if p.peak_rss_mib is not None]
        summary[config] = {
            "rounds": len(runs),
            "tasks_per_s": {
                "median": round(statistics.median(rates), 2),
                "min": min(rates),
                "max": max(rates),
            },
            "host_cpu_ms_per_task": round(statistics.median(cpu), 1) if cpu else None,
            "run_cpu_ms_per_task": round(statistics.median(run_cpu), 1) if run_cpu else None,
            "worker_cpu_ms_per_task": round(statistics.median(worker), 1),
            "peak_rss_mib": round(statistics.median(rss), 1) if rss else None,
            "step_ms": {
                step: round(statistics.median(values), 1)
                for step in STEPS
                if (values := [p.step_ms[step] for p in runs if step in p.step_ms])
            },
            "cycle_ms": round(1000 * runs[0].processes / statistics.median(rates), 1),
        }
    return summary


def ratios(summary: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets: tasks/s ulos-py pN over Celery cN, and machine CPU per task ulos-py ≤
    Celery's; also CPU of the run's own processes only, which other load does not touch."""
    out = []
    pairs = [(f"ulos-p{n}", n, target) for n, target in RATE_TARGETS.items()]
    pairs += [(f"ulos-p{n}{AS_SHIPPED}", n, target) for n, target in RATE_TARGETS.items()]
    for ulos_config, n, target in pairs:
        if ulos_config not in summary:
            continue
        ulos, celery = summary[ulos_config], summary.get(f"celery-c{n}")
        pair = f"{ulos_config} / celery-c{n}"
        rate = _ratio(ulos, celery, lambda s: s["tasks_per_s"]["median"])
        host = _ratio(ulos, celery, lambda s: s["host_cpu_ms_per_task"])
        run = _ratio(ulos, celery, lambda s: s["run_cpu_ms_per_task"])
        worker = _ratio(ulos, celery, lambda s: s["worker_cpu_ms_per_task"])
        cpu_target = WORKER_CPU_TARGET
        out += [
            _verdict(f"tasks/s {pair}", rate, f">= {target}", rate is not None and rate >= target),
            _verdict(
                f"worker CPU/task {pair}",
                worker,
                f"<= {cpu_target}",
                worker is not None and worker <= cpu_target,
            ),
            _verdict(f"host CPU/task {pair}", host, "<= 1.0", host is not None and host <= 1.0),
            _verdict("  (the run's processes only)", run, "<= 1.0", run is not None and run <= 1),
        ]
    return out


def _verdict(what: str, ratio: float | None, target: str, met: bool) -> dict[str, Any]:
    return {"what": what, "ratio": ratio, "target": target, "met": met}


def _ratio(
    a: dict[str, Any] | None, b: dict[str, Any] | None, value: Callable[[dict[str, Any]], Any]
) -> float | None:
    if a is None or b is None or not value(a) or not value(b):
        return None
    return round(float(value(a)) / float(value(b)), 3)


def large_summary(large: list[LargeResult], rss_10k: float | None) -> list[dict[str, Any]]:
    rows = []
    for r in large:
        growth = None
        if r.node_peak_rss_mib is not None and rss_10k is not None:
            growth = round(r.node_peak_rss_mib - rss_10k, 1)
        rows.append(
            {
                "size_mb": r.size_mb,
                "zip_bytes": r.zip_bytes,
                "tasks": r.tasks,
                "node_mb_per_s": _spread(r.node_mb_per_s),
                "bare_mb_per_s": _spread(r.bare_mb_per_s),
                "node_over_bare": None if r.ratio is None else round(r.ratio, 3),
                "node_peak_rss_mib": r.node_peak_rss_mib,
                "rss_growth_over_10kb_mib": growth,
                "node_step_ms": r.phase["step_ms"],
                "node_cpu_ms_per_task": r.phase["cpu_ms_per_task"],
            }
        )
    return rows


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": round(statistics.median(values), 1), "min": min(values), "max": max(values)}


def build_report(
    args: argparse.Namespace,
    zip_data: bytes,
    phases: list[PeerPhase],
    large: list[LargeResult],
    has_processes: bool,
    wall_s: float,
    machine: dict[str, Any],
) -> dict[str, Any]:
    summary = summarize(phases)
    rss_10k = (summary.get("ulos-p1") or {}).get("peak_rss_mib")
    large_rows = large_summary(large, rss_10k)
    checks_ok = all(not phase_problems(asdict(p)) for p in phases) and all(
        not phase_problems(r.phase) for r in large
    )
    return {
        "benchmark": "peer_celery",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "tasks": args.tasks,
        "rounds": args.rounds,
        "zip_bytes": len(zip_data),
        "zip_files": ZIP_FILES,
        "node_has_processes_option": has_processes,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "celery": _version("celery"),
        },
        "phases": [asdict(p) for p in phases],
        "summary": summary,
        "ratios": ratios(summary) + large_verdicts(large_rows),
        "large": large_rows,
        "node_peak_rss_10kb_mib": rss_10k,
        "wall_s": round(wall_s, 1),
        "machine": machine,
        "disturbed": disturbances([asdict(p) for p in phases], machine),
        "ok": checks_ok,
    }


def large_verdicts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The 100 MB targets, as verdicts like the others (so runs can be combined)."""
    big = next((r for r in rows if r["size_mb"] == max(LARGE_MB)), None)
    if big is None:
        return []
    ratio, growth = big["node_over_bare"], big["rss_growth_over_10kb_mib"]
    growth_mb = None if growth is None else round(growth * MIB / MB, 1)
    return [
        _verdict(
            "100 MB node / bare loop MB/s",
            ratio,
            f">= {LARGE_RATE_TARGET}",
            ratio is not None and ratio >= LARGE_RATE_TARGET,
        ),
        _verdict(
            "100 MB peak RSS over 10 KB (MB)",
            growth_mb,
            f"<= {RSS_GROWTH_TARGET_MB}",
            growth_mb is not None and growth_mb <= RSS_GROWTH_TARGET_MB,
        ),
    ]


def disturbances(phases: list[dict[str, Any]], machine: dict[str, Any]) -> list[str]:
    """Why this run's numbers may carry another load's noise (empty: a clean run)."""
    reasons = [
        f"{p['label']}: other processes used {p['foreign_cpu_percent']:.0f} % of the host CPU"
        for p in phases
        if p["foreign_cpu_percent"] > DISTURBED_PERCENT
    ]
    if machine["steal_percent"] > STEAL_PERCENT:
        reasons.append(f"steal time {machine['steal_percent']:.1f} % of the run")
    return reasons


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def phase_problems(p: dict[str, Any]) -> list[str]:
    if p["error"]:
        return [p["error"]]
    problems = []
    if p["received"] != p["tasks"]:
        problems.append(f"{p['received']}/{p['tasks']} forwarded")
    if p["log_notices"] != p["expected_notices"]:
        problems.append(f"{p['log_notices']}/{p['expected_notices']} log notices")
    if p["exit_code"] != 0:
        problems.append(f"exit code {p['exit_code']} after SIGTERM")
    if p["crash_notices"] or p["left_in_input"] or p["duplicates"] or p["unexpected"]:
        problems.append(
            f"{p['crash_notices']} crashes, {p['left_in_input']} left in input, "
            f"{p['duplicates']} duplicates, {p['unexpected']} unexpected"
        )
    if p["log_warnings"]:
        problems.append(f"{p['log_warnings']} warning/error lines in the worker's log")
    return problems


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render(report: dict[str, Any]) -> str:
    lines = [
        f"ulos-py node vs Celery {report['host']['celery']}: {report['tasks']} tasks per phase, "
        f"{report['zip_bytes'] / 1024:.1f} KiB zip of {report['zip_files']} files, "
        f"{report['rounds']} round(s), {report['host']['cpus']} CPUs, "
        f"wall {report['wall_s']:.0f} s",
        "",
        f"{'phase':<18} {'tasks/s':>8} {'first→last':>10} {'start→1st':>9} {'host CPU':>8} "
        f"{'run CPU':>8} {'CPU ms/task':>15} {'peak RSS':>9} {'host %':>9}  checks",
        f"{'':<18} {'':>8} {'s':>10} {'s':>9} {'ms/task':>8} {'ms/task':>8} {'wrk/ftp/mq':>15} "
        f"{'MiB':>9} {'busy/frgn':>9}",
    ]
    for p in report["phases"]:
        cpu = p["cpu_ms_per_task"]
        parts = f"{cpu['worker']:.1f}/{cpu['ftp_server']:.1f}/{cpu['broker']:.1f}" if cpu else "-"
        host = f"{p['host_cpu_busy_percent']:.0f}/{p['foreign_cpu_percent']:.0f}"
        checks = "; ".join(phase_problems(p)) or "ok"
        lines.append(
            f"{p['label']:<18} {p['tasks_per_s']:>8.1f} {p['first_to_last_s']:>10.2f} "
            f"{p['start_to_first_s']:>9.2f} {_fmt(p['host_cpu_ms_per_task']):>8} "
            f"{_fmt(p['run_cpu_ms_per_task']):>8} {parts:>15} {_fmt(p['peak_rss_mib']):>9} "
            f"{host:>9}  {checks}"
        )
    machine = report["machine"]
    load = "/".join(f"{v:.2f}" for v in machine["loadavg_start"])
    lines.append(f"load average at start {load}, steal {machine['steal_percent']:.1f} %")
    if report["disturbed"]:
        lines.append("DISTURBED by other load: " + "; ".join(report["disturbed"]))
    else:
        lines.append(
            f"clean run: no phase's other processes above {DISTURBED_PERCENT} % of the host "
            f"CPU, steal under {STEAL_PERCENT} %"
        )
    lines += ["", *_render_summary(report), "", *_render_large(report)]
    lines.append("")
    lines.append("all checks pass" if report["ok"] else "SOME CHECKS FAILED (see the phases)")
    return "\n".join(lines)


def _render_summary(report: dict[str, Any]) -> list[str]:
    lines = [
        f"{'configuration':<16} {'tasks/s median (min-max)':>26} {'host CPU ms/task':>17} "
        f"{'run CPU ms/task':>16} {'worker CPU ms/task':>19} {'peak RSS MiB':>13}"
    ]
    for config, s in report["summary"].items():
        rate = s["tasks_per_s"]
        text = f"{rate['median']:.1f} ({rate['min']:.1f}-{rate['max']:.1f})"
        lines.append(
            f"{config:<16} {text:>26} {_fmt(s['host_cpu_ms_per_task']):>17} "
            f"{_fmt(s['run_cpu_ms_per_task']):>16} {s['worker_cpu_ms_per_task']:>19.1f} "
            f"{_fmt(s['peak_rss_mib']):>13}"
        )
    names = [*STEPS, "cycle"]
    widths = [max(7, len(name)) for name in names]
    lines += ["", "median ms per task, from the notices' timestamps (cycle = processes / tasks/s):"]
    lines.append(f"{'':<16}" + "".join(f" {n:>{w}}" for n, w in zip(names, widths, strict=True)))
    for config, s in report["summary"].items():
        cells = [_fmt(s["step_ms"].get(step)) for step in STEPS] + [_fmt(s["cycle_ms"])]
        row = "".join(f" {c:>{w}}" for c, w in zip(cells, widths, strict=True))
        lines.append(f"{config:<16}{row}")
    lines.append("")
    for r in report["ratios"]:
        verdict = "meets" if r["met"] else ("n/a" if r["ratio"] is None else "MISSES")
        lines.append(f"{r['what']:<42} {_fmt(r['ratio'], 2):>6}  target {r['target']:<7} {verdict}")
    if not report["node_has_processes_option"]:
        lines.append("(ulos-p2 not run: this node has no --processes option yet)")
    return lines


def _render_large(report: dict[str, Any]) -> list[str]:
    if not report["large"]:
        return []
    rss_10k = report["node_peak_rss_10kb_mib"]
    lines = [
        "large zips through ulos-p1; MB/s = 2 x zip MB (down + up) / seconds per task "
        "(node: between forwards; bare loop: download, read every entry, write the new "
        "archive, upload)",
        f"{'zip':>7} {'node MB/s med (min-max)':>25} {'bare MB/s med (min-max)':>25} "
        f"{'node/bare':>9} {'node peak RSS MiB':>18} {'over 10 KB':>10}",
        f"{'10 KB':>7} {'':>25} {'':>25} {'':>9} {_fmt(rss_10k):>18} {'':>10}",
    ]
    for r in report["large"]:
        node, bare = r["node_mb_per_s"], r["bare_mb_per_s"]
        lines.append(
            f"{r['size_mb']:>4} MB {_spread_text(node):>25} {_spread_text(bare):>25} "
            f"{_fmt(r['node_over_bare'], 2):>9} {_fmt(r['node_peak_rss_mib']):>18} "
            f"{_fmt(r['rss_growth_over_10kb_mib']):>10}"
        )
    for r in report["large"]:
        steps = ", ".join(f"{step} {ms:.0f}" for step, ms in r["node_step_ms"].items())
        lines.append(f"{r['size_mb']:>4} MB node steps, median ms: {steps}")
        if cpu := r.get("node_cpu_ms_per_task"):  # reports made before it lack it
            parts = ", ".join(f"{who} {ms:.0f}" for who, ms in cpu.items())
            lines.append(f"{r['size_mb']:>4} MB node phase, CPU ms per task: {parts}")
    big = next((r for r in report["large"] if r["size_mb"] == max(LARGE_MB)), None)
    if big is not None:
        ratio, growth = big["node_over_bare"], big["rss_growth_over_10kb_mib"]
        rate_ok = ratio is not None and ratio >= LARGE_RATE_TARGET
        rss_ok = growth is not None and growth * MIB / MB <= RSS_GROWTH_TARGET_MB
        lines.append(
            f"100 MB: node/bare {_fmt(ratio, 2)} (target ≥ {LARGE_RATE_TARGET:.2f}: "
            f"{'meets' if rate_ok else 'MISSES'}); peak RSS +{_fmt(growth)} MiB over 10 KB "
            f"(target ≤ {RSS_GROWTH_TARGET_MB} MB: {'meets' if rss_ok else 'MISSES'})"
        )
    return lines


def _spread_text(spread: dict[str, float] | None) -> str:
    if spread is None:
        return "-"
    return f"{spread['median']:.1f} ({spread['min']:.1f}-{spread['max']:.1f})"


def config_list(text: str) -> list[str]:
    configs = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [c for c in configs if c not in CONFIGS]
    if unknown or not configs:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(CONFIGS)}")
    return configs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tasks/s and CPU per task of a real ulos-py node vs a Celery app doing "
        "the same work, interleaved; MB/s and RSS on large zips (see benchmarks/README.md).",
    )
    parser.add_argument("--tasks", type=int, default=1000, help="tasks per phase (default 1000)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default 2)")
    parser.add_argument(
        "--runs",
        type=int,
        default=RUNS,
        help=f"separate invocations whose medians decide each target (default {RUNS}; "
        "1: one run, its own verdicts)",
    )
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="combine the JSON reports of runs made earlier (--out of --runs 1) and stop",
    )
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument(
        "--configs",
        type=config_list,
        default=list(CONFIGS),
        help=f"comma-separated subset of {','.join(CONFIGS)} (default all, in that order)",
    )
    parser.add_argument(
        "--large-tasks",
        type=int,
        default=6,
        help="tasks per large zip through the node (0: skip the large-zip part; default 6)",
    )
    parser.add_argument(
        "--large-sizes",
        type=lambda text: [int(v) for v in text.split(",")],
        default=list(LARGE_MB),
        help="large zip sizes in MB (default 1,100)",
    )
    parser.add_argument(
        "--broker-url", default="amqp://guest:guest@127.0.0.1:5672/", help="RabbitMQ URL"
    )
    parser.add_argument("--tmp-dir", type=Path, help="parent of the run's temp dir")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per phase")
    parser.add_argument("--seed", type=int, default=2031, help="seed of the zips' content")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="profile the node phases here")
    parser.add_argument(
        "--py-spy-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph"
    )
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.rounds < 1 or args.runs < 1 or args.large_tasks == 1:
        parser.error(
            "--tasks must be at least 2, --rounds and --runs at least 1, --large-tasks 0 or ≥ 2"
        )
    args.prefetch = 1  # per process, both sides: what node_env reads
    return args


# Several runs


def run_separately(args: argparse.Namespace, argv: list[str]) -> int:
    """`args.runs` separate invocations of this script, one after the other, each a fresh
    set of processes, queues and FTP server; then their verdicts combined."""
    passed_on = strip_options(argv, {"--runs": True, "--out": True, "--json": False})
    reports = []
    with tempfile.TemporaryDirectory(prefix="ulos-peer-runs-") as folder:
        for n in range(1, args.runs + 1):
            out = Path(folder) / f"run-{n}.json"
            say(f"run {n} of {args.runs}: a separate invocation")
            command = [sys.executable, __file__, *passed_on, "--runs", "1", "--out", str(out)]
            code = subprocess.run(command, check=False).returncode
            if code == 130 or not out.exists():
                say(f"run {n} ended with exit code {code} and no report: stopping")
                return code or 1
            reports.append(json.loads(out.read_text()))
    return report_runs(reports, args.out)


def strip_options(argv: list[str], options: dict[str, bool]) -> list[str]:
    """`argv` without the given options (True: the option takes a value)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = options[name] and "=" not in arg
            continue
        kept.append(arg)
    return kept


def report_runs(reports: list[dict[str, Any]], out: Path | None) -> int:
    combined = combine(reports)
    print(render_runs(combined), flush=True)
    if out:
        out.write_text(json.dumps({"combined": combined, "runs": reports}, indent=2) + "\n")
    return 0 if all(r["ok"] for r in reports) else 1


def combine(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Each target's ratio in every run, their median (which decides), spread, and the
    median of the clean runs alone."""
    runs = [
        {"when": r["when"], "ok": r["ok"], "disturbed": r.get("disturbed", []), "n": n}
        for n, r in enumerate(reports, start=1)
    ]
    targets: dict[str, dict[str, Any]] = {}
    for n, report in enumerate(reports, start=1):
        previous = ""
        for verdict in report["ratios"]:
            what = verdict["what"]
            if what.startswith(" "):  # a note on the line before: named after it
                what = f"{previous} {what.strip()}"
            else:
                previous = what
            row = targets.setdefault(what, {"target": verdict["target"], "values": {}})
            row["values"][n] = verdict["ratio"]
    rows = []
    clean = {run["n"] for run in runs if not run["disturbed"]}
    for what, row in targets.items():
        values = [v for v in row["values"].values() if v is not None]
        clean_values = [v for n, v in row["values"].items() if v is not None and n in clean]
        median = round(statistics.median(values), 3) if values else None
        rows.append(
            {
                "what": what,
                "target": row["target"],
                "by_run": [row["values"].get(run["n"]) for run in runs],
                "median": median,
                "min": min(values) if values else None,
                "max": max(values) if values else None,
                "clean_median": round(statistics.median(clean_values), 3) if clean_values else None,
                "met": median is not None and _meets(median, row["target"]),
            }
        )
    return {"runs": runs, "targets": rows}


def _meets(value: float, target: str) -> bool:
    op, limit = target.split()
    return value >= float(limit) if op == ">=" else value <= float(limit)


def render_runs(combined: dict[str, Any]) -> str:
    runs = combined["runs"]
    heads = "".join(f" {'run ' + str(r['n']) + ('*' if r['disturbed'] else ''):>8}" for r in runs)
    lines = [
        "",
        f"verdicts over {len(runs)} separate runs: the median decides; * = a disturbed run",
        f"{'target':<42}{heads} {'median':>7} {'min-max':>11} {'clean med':>9}  target",
    ]
    for row in combined["targets"]:
        cells = "".join(f" {_fmt(v, 2):>8}" for v in row["by_run"])
        spread = f"{_fmt(row['min'], 2)}-{_fmt(row['max'], 2)}"
        verdict = "meets" if row["met"] else ("n/a" if row["median"] is None else "MISSES")
        lines.append(
            f"{row['what']:<42}{cells} {_fmt(row['median'], 2):>7} {spread:>11} "
            f"{_fmt(row['clean_median'], 2):>9}  {row['target']:<7} {verdict}"
        )
    for run in runs:
        state = "; ".join(run["disturbed"]) if run["disturbed"] else "clean"
        checks = "" if run["ok"] else " (SOME CHECKS FAILED)"
        lines.append(f"run {run['n']} ({run['when']}): {state}{checks}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.combine:
        return report_runs([json.loads(path.read_text()) for path in args.combine], args.out)
    if celery_missing():
        say(INSTALL_HINT)
        return 2
    if args.runs > 1:
        return run_separately(args, argv)
    return run_and_report(args, run, render)


if __name__ == "__main__":
    sys.exit(main())
