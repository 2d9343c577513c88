#!/usr/bin/env python
"""Throughput and memory of a real `ulos-py node` process, against a lean asyncio baseline.

Both run the same work on the same broker and FTP server: consume a task, download its zip,
unpack, pack, upload it back, publish seven log notices and one confirmed forward, ack. The
node's rate divided by the baseline's (bare_loop.py) is the price of everything the node
adds: validation, safe archives, workspaces, atomic uploads, retries, reporting. The FTP
server, the node and the baseline each run in a process of their own. See README.md here.

    python benchmarks/node_throughput.py [--tasks 2000] [--prefetch 20] [--json | --out F]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage
from bare_loop import BareConfig, bare_main
from bench_fixtures import (
    CRASH_KEY,
    FTP_PASSWORD,
    FTP_USER,
    LOGS_KEY,
    ZIP_FILES,
    Broker,
    Ftp,
    Topology,
    declare_topology,
    delete_topology,
    ftp_server,
    make_zip,
    place_zips,
    publish_tasks,
    queue_depth,
    say,
    settled_depth,
)
from proc_probes import CpuSnapshot, broker_pids, rss_mib
from syscall_trace import read_counts, start_tracer, stop_tracer

REPO = Path(__file__).resolve().parents[1]
REGISTRY = REPO / "executors" / "registry.toml"
# received, downloaded, execution_started, execution_finished, uploaded, forwarded, acked
NOTICES_PER_TASK = 7
TARGET_RATIO = 0.70
REPLACED_SYSTEM_RATE = 17.0  # tasks/s of the Scala system ulos-py replaces
CHECKPOINTS = (10, 50, 90)  # % of the tasks done when the worker's RSS is sampled


# Workers under test: the node (its console script) and the baseline (a spawned process)


class Worker(Protocol):
    @property
    def pid(self) -> int: ...

    def exited(self) -> bool: ...

    async def stop(self) -> int | None:
        """SIGTERM, wait for a graceful exit (kill after a grace), return the exit code."""


class NodeProcess:
    """`ulos-py node` as operators run it: a process configured by environment variables."""

    def __init__(self, process: asyncio.subprocess.Process, log_path: Path) -> None:
        self._process = process
        self.log_path = log_path

    @staticmethod
    def command() -> list[str]:
        script = Path(sys.executable).parent / "ulos-py"
        if script.is_file():
            return [str(script), "node"]
        return [sys.executable, "-m", "ulos_py", "node"]

    @classmethod
    async def start(
        cls, env: dict[str, str], log_path: Path, command: list[str] | None = None
    ) -> NodeProcess:
        """The node, or any worker `command` (its SIGTERM-and-wait stop is generic)."""
        with log_path.open("wb") as log_file:  # the child keeps its own descriptor
            process = await asyncio.create_subprocess_exec(
                *(command or cls.command()),
                cwd=REPO,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_file,
                stderr=log_file,
                start_new_session=True,  # Ctrl-C reaches the benchmark only; it stops the worker
            )
        return cls(process, log_path)

    @property
    def pid(self) -> int:
        return self._process.pid

    def exited(self) -> bool:
        return self._process.returncode is not None

    async def stop(self, grace: float = 60) -> int | None:
        if self._process.returncode is None:
            with suppress(ProcessLookupError):
                self._process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self._process.wait(), grace)
            except TimeoutError:
                say(f"node {self.pid} still running {grace:g} s after SIGTERM: killing it")
                self._process.kill()
                await self._process.wait()
        return self._process.returncode


class BareProcess:
    """The lean baseline (`bare_main`) in a spawned process of its own."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process

    @classmethod
    def start(cls, config: BareConfig) -> BareProcess:
        ctx = multiprocessing.get_context("spawn")
        process = ctx.Process(target=bare_main, args=(config,), name="bench-bare", daemon=True)
        process.start()
        return cls(process)

    @property
    def pid(self) -> int:
        return self._process.pid or 0

    def exited(self) -> bool:
        return self._process.exitcode is not None

    async def stop(self, grace: float = 60) -> int | None:
        if self._process.exitcode is None:
            with suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            await asyncio.to_thread(self._process.join, grace)
        if self._process.exitcode is None:
            self._process.kill()
            await asyncio.to_thread(self._process.join, 5)
        return self._process.exitcode


def node_env(bench: Bench, connections: int) -> dict[str, str]:
    """The node's whole configuration, SPEC §6 names plus ULOS_* additions."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("MESSAGE_BROKER_", "REMOTE_STORAGE_", "ULOS_"))
    }
    work_dir = bench.tmp / f"node-work-{connections}"
    env.update(
        MESSAGE_BROKER_HOST=bench.broker.host,
        MESSAGE_BROKER_PORT=str(bench.broker.port),
        MESSAGE_BROKER_USERNAME=bench.broker.username,
        MESSAGE_BROKER_PASSWORD=bench.broker.password,
        MESSAGE_BROKER_LOGS_EXCHANGE=bench.topology.logs,
        MESSAGE_BROKER_LOGS_ROUTING_KEY=LOGS_KEY,
        MESSAGE_BROKER_CRASH_EXCHANGE=bench.topology.crashes,
        MESSAGE_BROKER_CRASH_ROUTING_KEY=CRASH_KEY,
        MESSAGE_BROKER_CONSUMPTION_QUEUE=bench.topology.queue("input"),
        MESSAGE_BROKER_PREFETCH_COUNT=str(bench.args.prefetch),
        REMOTE_STORAGE_HOST=bench.ftp.host,
        REMOTE_STORAGE_PORT=str(bench.ftp.port),
        REMOTE_STORAGE_USERNAME=FTP_USER,
        REMOTE_STORAGE_PASSWORD=FTP_PASSWORD,
        ULOS_NODE_ID=f"{bench.topology.prefix}-node",
        ULOS_EXECUTORS_FILE=str(REGISTRY),
        ULOS_WORK_DIR=str(work_dir),
        ULOS_LOG_FORMAT="json",
        ULOS_LOG_LEVEL="warning",
        ULOS_STORAGE_CONNECTIONS=str(connections),
        # One worker, in the node's own process: the process measured is the one doing the
        # work, at the prefetch asked for (the default is one worker per core).
        ULOS_PROCESSES="1",
    )
    return env


# Measuring one phase


Pids = tuple[int, int, list[int]]
"""(worker, FTP server, RabbitMQ processes): whose CPU and memory a phase reads."""


class DoneWatcher:
    """Consumes the `done` queue: arrival times, RSS at 10/50/90 %, CPU over first→last."""

    def __init__(self, task_ids: set[str], hop: dict[str, str], pids: Callable[[], Pids]) -> None:
        self._expected = task_ids
        self._hop = hop
        self._pids = pids
        self.seen: set[str] = set()
        self.arrivals: list[float] = []
        self.first = self.last = 0.0
        self.duplicates = self.unexpected = 0
        total = len(task_ids)
        self._checkpoints = {max(1, math.ceil(total * p / 100)): p for p in CHECKPOINTS}
        self.rss_at: dict[str, float | None] = {}
        self.cpu_first: CpuSnapshot | None = None
        self.cpu_last: CpuSnapshot | None = None
        self.complete = asyncio.Event()

    @property
    def total(self) -> int:
        return len(self._expected)

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        now = time.perf_counter()
        body = json.loads(message.body)
        task_id = body.get("taskId")
        if task_id not in self._expected or body.get("routingTree") != self._hop:
            self.unexpected += 1
            return
        if task_id in self.seen:
            self.duplicates += 1
            return
        self.seen.add(task_id)
        self.arrivals.append(now)
        pids = self._pids()
        if len(self.seen) == 1:
            self.first = now
            self.cpu_first = CpuSnapshot.take(*pids)
        self.last = now
        if (percent := self._checkpoints.get(len(self.seen))) is not None:
            self.rss_at[f"{percent}%"] = rss_mib(pids[0])
        if len(self.seen) == len(self._expected):
            self.cpu_last = CpuSnapshot.take(*pids)
            self.complete.set()


def rates_by_tenth(arrivals: list[float]) -> list[float]:
    """Tasks/s in each tenth of the run (by tasks done), to show whether the rate holds."""
    if len(arrivals) < 20:
        return []
    marks = [round(i * (len(arrivals) - 1) / 10) for i in range(11)]
    return [
        round((end - start) / (arrivals[end] - arrivals[start]), 1)
        for start, end in itertools.pairwise(marks)
        if arrivals[end] > arrivals[start]
    ]


@dataclass
class PhaseResult:
    label: str
    config: str
    round: int
    kind: str
    ftp_connections: int
    tasks: int
    ratio_to_bare: float | None = None
    received: int = 0
    duplicates: int = 0
    unexpected: int = 0
    tasks_per_s: float = 0.0
    first_to_last_s: float = 0.0
    start_to_first_s: float = 0.0
    start_to_last_s: float = 0.0
    exit_code: int | None = None
    rss_mib_at: dict[str, float | None] = field(default_factory=dict)
    peak_rss_mib: float | None = None
    rss_mib_end: float | None = None
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)
    loop_thread_busy_percent: float = 0.0
    host_cpu_busy_percent: float = 0.0
    foreign_cpu_percent: float = 0.0
    tasks_per_s_by_tenth: list[float] = field(default_factory=list)
    log_notices: int = 0
    crash_notices: int = 0
    left_in_input: int = 0
    log_warnings: int = 0
    writes_per_task: dict[str, Any] | None = None
    """With --strace: socket writes and FTP commands per task (see syscall_trace.py)."""
    error: str | None = None

    def fill_timing(self, watcher: DoneWatcher, started: float) -> None:
        self.received = len(watcher.seen)
        self.duplicates, self.unexpected = watcher.duplicates, watcher.unexpected
        self.rss_mib_at = watcher.rss_at
        if self.received == 0:
            return
        self.first_to_last_s = round(watcher.last - watcher.first, 3)
        self.start_to_first_s = round(watcher.first - started, 3)
        self.start_to_last_s = round(watcher.last - started, 3)
        if self.received > 1 and watcher.last > watcher.first:
            self.tasks_per_s = round((self.received - 1) / (watcher.last - watcher.first), 2)
            self.tasks_per_s_by_tenth = rates_by_tenth(watcher.arrivals)
        first, last = watcher.cpu_first, watcher.cpu_last
        if first is not None and last is not None and self.received > 1:
            per_task = 1000 / (self.received - 1)
            self.cpu_ms_per_task = {
                "worker": round((last.worker - first.worker) * per_task, 2),
                "ftp_server": round((last.ftp - first.ftp) * per_task, 2),
                "broker": round((last.broker - first.broker) * per_task, 2),
            }
            window = watcher.last - watcher.first
            self.loop_thread_busy_percent = round(
                100 * (last.loop_thread - first.loop_thread) / window, 1
            )
            self.fill_host_cpu(first, last)

    def fill_host_cpu(self, first: CpuSnapshot, last: CpuSnapshot) -> None:
        """Host CPU busy (% of all cores) and the part of it no process of this run used."""
        if (shares := last.host_shares_since(first)) is not None:
            self.host_cpu_busy_percent, self.foreign_cpu_percent = shares


@dataclass
class Bench:
    args: argparse.Namespace
    broker: Broker
    topology: Topology
    ftp: Ftp
    tmp: Path
    channel: AbstractChannel
    zip_data: bytes
    broker_pids: list[int]
    broker_lost: str | None = None

    def on_broker_close(self, _: object, exc: BaseException | None = None) -> None:
        """Another client may force-close every connection (a test of connection loss)."""
        self.broker_lost = repr(exc) if exc is not None else "closed"


@dataclass(frozen=True)
class WorkerSpec:
    label: str
    kind: str
    ftp_connections: int
    start: Callable[[], Awaitable[Worker]]


async def quietly(cleanup: Awaitable[Any]) -> None:
    """A clean-up step whose failure must not hide the error that led to it."""
    try:
        await cleanup
    except Exception as exc:
        say(f"clean-up step failed: {exc!r}")


def phase_problem(
    bench: Bench, watcher: DoneWatcher, worker: Worker, deadline: float
) -> str | None:
    """Why waiting for the rest of the tasks is pointless, if it is."""
    done = f"{len(watcher.seen)}/{watcher.total} done"
    if bench.broker_lost is not None:
        return (
            f"the broker closed the benchmark's connection ({bench.broker_lost}) with {done}: "
            "did another client force-close connections? The run is void"
        )
    if worker.exited():
        return f"the worker exited early with {done}"
    if time.monotonic() > deadline:
        return f"{done} after {bench.args.timeout:g} s"
    return None


async def wait_for_done(bench: Bench, watcher: DoneWatcher, worker: Worker, label: str) -> None:
    """Until every task arrived; raises if the worker dies, the broker or the time runs out."""
    deadline = time.monotonic() + bench.args.timeout
    next_report = time.monotonic() + 10
    while not watcher.complete.is_set():
        if (problem := phase_problem(bench, watcher, worker, deadline)) is not None:
            raise RuntimeError(f"{label}: {problem}")
        if time.monotonic() > next_report:
            say(f"  {label}: {len(watcher.seen)}/{watcher.total} done")
            next_report += 10
        with suppress(TimeoutError):
            await asyncio.wait_for(watcher.complete.wait(), 0.5)


async def prepare_phase(bench: Bench, label: str) -> tuple[set[str], list[bytes]]:
    """Empty queues, fresh zips at distinct paths, task bodies (published by the caller)."""
    for queue_name, _, _ in bench.topology.bindings():
        queue = await bench.channel.get_queue(queue_name, ensure=False)
        await queue.purge()
    paths = await asyncio.to_thread(
        place_zips, bench.ftp.root, label, bench.args.tasks, bench.zip_data
    )
    tasks = [bench.topology.task(label, i, path) for i, path in enumerate(paths)]
    return {t["taskId"] for t in tasks}, [json.dumps(t).encode() for t in tasks]


async def run_phase(bench: Bench, spec: WorkerSpec, round_no: int) -> PhaseResult:
    config = spec.label
    if bench.args.rounds > 1:
        spec = replace(spec, label=f"{config}-r{round_no}")
    result = PhaseResult(
        spec.label, config, round_no, spec.kind, spec.ftp_connections, bench.args.tasks
    )
    task_ids, bodies = await prepare_phase(bench, spec.label)
    await publish_tasks(bench.channel, bench.topology, bodies)
    say(f"{spec.label}: {len(bodies)} tasks queued, starting the worker")
    worker: Worker | None = None
    watcher = DoneWatcher(
        task_ids,
        bench.topology.done_hop(),
        lambda: (worker.pid if worker else 0, bench.ftp.pid, bench.broker_pids),
    )
    done_queue = await bench.channel.get_queue(bench.topology.queue("done"), ensure=False)
    tag = await done_queue.consume(watcher.on_message, no_ack=True)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(quietly, done_queue.cancel(tag))
        started = time.perf_counter()
        worker = await spec.start()
        stack.push_async_callback(worker.stop)
        profiler = await start_profiler(bench, spec.label, worker.pid)
        trace = bench.args.strace / f"{spec.label}.strace" if bench.args.strace else None
        tracer = await start_tracer(worker.pid, trace) if trace else None
        try:
            await wait_for_done(bench, watcher, worker, spec.label)
        except RuntimeError as exc:
            result.error = str(exc)
        result.fill_timing(watcher, started)
        result.peak_rss_mib = rss_mib(worker.pid, "VmHWM")
        result.rss_mib_end = rss_mib(worker.pid)
        result.exit_code = await worker.stop()
        await stop_profiler(profiler)
        if tracer is not None and trace is not None:
            await stop_tracer(tracer)
            counts = read_counts(trace, bench.broker.port, bench.ftp.port)
            result.writes_per_task = counts.per_task()
    if bench.broker_lost is None:
        await count_outcomes(bench, result)
    if isinstance(worker, NodeProcess):
        inspect_node_log(worker.log_path, result)
    await asyncio.to_thread(shutil.rmtree, bench.ftp.root / "bench" / spec.label, True)
    say(f"{spec.label}: {result.tasks_per_s:.1f} tasks/s, exit code {result.exit_code}")
    return result


async def count_outcomes(bench: Bench, result: PhaseResult) -> None:
    expected_logs = result.received * NOTICES_PER_TASK
    result.log_notices = await settled_depth(
        bench.channel, bench.topology.queue("logs"), expected_logs
    )
    result.crash_notices = await queue_depth(bench.channel, bench.topology.queue("crashes"))
    result.left_in_input = await queue_depth(bench.channel, bench.topology.queue("input"))


def inspect_node_log(path: Path, result: PhaseResult) -> None:
    lines = path.read_text(errors="replace").splitlines()
    noisy = [line for line in lines if '"level": "warning"' in line or '"level": "error"' in line]
    result.log_warnings = len(noisy)
    if lines and (result.exit_code != 0 or result.error or noisy):
        say(f"--- last lines of the node's log ({path.name}) ---")
        for line in (noisy or lines)[-15:]:
            say(f"  {line[:400]}")


async def start_profiler(bench: Bench, label: str, pid: int) -> asyncio.subprocess.Process | None:
    """Optional py-spy recording of the worker (it slows the worker a little)."""
    if bench.args.py_spy is None:
        return None
    out_dir: Path = bench.args.py_spy
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = {"flamegraph": "svg", "raw": "folded", "speedscope": "json"}[bench.args.py_spy_format]
    return await asyncio.create_subprocess_exec(
        "py-spy",
        "record",
        "--pid",
        str(pid),
        "--rate",
        "100",
        "--gil",  # only the thread holding the GIL: what serialises a Python process
        "--nonblocking",  # do not pause the worker at each sample
        "--format",
        bench.args.py_spy_format,
        "--output",
        str(out_dir / f"{label}.{suffix}"),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )


async def stop_profiler(profiler: asyncio.subprocess.Process | None) -> None:
    """py-spy writes its file when the profiled process exits."""
    if profiler is None:
        return
    try:
        await asyncio.wait_for(profiler.wait(), 30)
    except TimeoutError:
        profiler.send_signal(signal.SIGINT)
        await profiler.wait()


# The run and its report


def worker_specs(bench: Bench) -> list[WorkerSpec]:
    specs = []
    for connections in bench.args.storage_connections:

        async def start_node(connections: int = connections) -> Worker:
            log_path = bench.tmp / f"node-c{connections}.log"
            return await NodeProcess.start(node_env(bench, connections), log_path)

        specs.append(WorkerSpec(f"node-c{connections}", "node", connections, start_node))
    if not bench.args.no_bare:
        config = BareConfig(
            broker_url=bench.broker.url,
            input_queue=bench.topology.queue("input"),
            processing_exchange=bench.topology.processing,
            logs_exchange=bench.topology.logs,
            prefetch=bench.args.prefetch,
            ftp_host=bench.ftp.host,
            ftp_port=bench.ftp.port,
            ftp_connections=bench.args.bare_ftp_connections,
            work_dir=str(bench.tmp / "bare-work"),
            node_id=f"{bench.topology.prefix}-bare",
        )

        async def start_bare() -> Worker:
            return BareProcess.start(config)

        label = f"bare-c{config.ftp_connections}"
        specs.append(WorkerSpec(label, "bare", config.ftp_connections, start_bare))
    return specs


async def run(
    args: argparse.Namespace, make_specs: Callable[[Bench], list[WorkerSpec]] | None = None
) -> dict[str, Any]:
    """Every phase, `args.rounds` times (order reversed every other round, against drift)."""
    topology = Topology(f"bench-{uuid.uuid4().hex[:8]}")
    phases: list[PhaseResult] = []
    async with AsyncExitStack() as stack:
        tmp = run_tmp_dir(stack, args)
        zip_data = make_zip(args.seed)
        bench = await open_bench(stack, args, topology, tmp, zip_data, args.ftp_server)
        say(
            f"broker {bench.broker.host}:{bench.broker.port}, FTP 127.0.0.1:{bench.ftp.port} "
            f"({args.ftp_server}), names {topology.prefix}.*, zip {len(zip_data)} bytes"
        )
        specs = (make_specs or worker_specs)(bench)
        for round_no in range(1, args.rounds + 1):
            for spec in specs if round_no % 2 else specs[::-1]:
                phases.append(await run_phase(bench, spec, round_no))
                if bench.broker_lost is not None:
                    break  # the run's own connection is gone: later phases cannot run
            if bench.broker_lost is not None:
                break
    return build_report(args, zip_data, phases)


def run_tmp_dir(stack: AsyncExitStack, args: argparse.Namespace) -> Path:
    """The run's temp dir (FTP root, work dirs, logs) under `--tmp-dir`, removed by `stack`."""
    return Path(
        stack.enter_context(tempfile.TemporaryDirectory(prefix="ulos-bench-", dir=args.tmp_dir))
    )


async def open_bench(
    stack: AsyncExitStack,
    args: argparse.Namespace,
    topology: Topology,
    tmp: Path,
    zip_data: bytes,
    ftp_kind: str,
) -> Bench:
    """The FTP server, the benchmark's broker connection and the run's topology: all
    stopped, closed and deleted by `stack`, also on an error, Ctrl-C or SIGTERM."""
    broker = Broker.parse(args.broker_url)
    ftp = await stack.enter_async_context(ftp_server(tmp / "ftp-root", ftp_kind))
    connection = await aio_pika.connect(
        broker.url, client_properties={"connection_name": f"{topology.prefix} benchmark"}
    )
    stack.push_async_callback(connection.close)
    stack.push_async_callback(delete_topology, broker, topology)
    channel = await connection.channel(publisher_confirms=True)
    await declare_topology(channel, topology)
    bench = Bench(args, broker, topology, ftp, tmp, channel, zip_data, broker_pids())
    connection.close_callbacks.add(bench.on_broker_close)
    return bench


def build_report(
    args: argparse.Namespace, zip_data: bytes, phases: list[PhaseResult]
) -> dict[str, Any]:
    bare = {p.round: p.tasks_per_s for p in phases if p.kind == "bare" and not p.error}
    for p in phases:
        if p.kind == "node" and not p.error and bare.get(p.round):
            p.ratio_to_bare = round(p.tasks_per_s / bare[p.round], 3)
    by_config: dict[str, list[PhaseResult]] = {}
    for p in phases:
        by_config.setdefault(p.config, []).append(p)
    summary = {
        config: {
            "median_tasks_per_s": round(statistics.median(p.tasks_per_s for p in runs), 2),
            "median_ratio_to_bare": round(statistics.median(ratios), 3) if ratios else None,
            "rounds": len(runs),
        }
        for config, runs in by_config.items()
        for ratios in [[p.ratio_to_bare for p in runs if p.ratio_to_bare is not None]]
    }
    return {
        "benchmark": "node_throughput",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "tasks": args.tasks,
        "prefetch": args.prefetch,
        "zip_bytes": len(zip_data),
        "zip_files": ZIP_FILES,
        "notices_per_task": NOTICES_PER_TASK,
        "ftp_server": args.ftp_server,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "phases": [asdict(p) for p in phases],
        "rounds": args.rounds,
        "summary": summary,
        "target_ratio": TARGET_RATIO,
        "replaced_system_tasks_per_s": REPLACED_SYSTEM_RATE,
        "ok": all(p.error is None and p.exit_code == 0 for p in phases),
    }


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"ulos-py node throughput: {report['tasks']} tasks, prefetch {report['prefetch']}, "
        f"{report['zip_bytes'] / 1024:.1f} KiB zip of {report['zip_files']} files, "
        f"{report['notices_per_task']} notices + 1 forward per task, "
        f"{report['host']['cpus']} CPUs, {report['rounds']} round(s)",
        "",
        f"{'phase':<12} {'ftp':>4} {'tasks/s':>8} {'node/bare':>9} {'first→last':>10} "
        f"{'start→1st':>9} {'CPU ms/task':>11} {'peak RSS':>8} {'RSS @10/50/90%':>17} "
        f"{'loop':>5} {'host CPU %':>10} {'exit':>4}",
        f"{'':<12} {'conn':>4} {'':>8} {'':>9} {'s':>10} {'s':>9} {'wrk/ftp/mq':>11} "
        f"{'MiB':>8} {'MiB':>17} {'busy%':>5} {'busy/frgn':>10}",
    ]
    lines += [_table_row(p) for p in report["phases"]]
    lines.append("")
    lines.append("tasks/s in each tenth of the run (flat = no slow-down as queues and disks fill):")
    for p in report["phases"]:
        tenths = " ".join(f"{rate:.0f}" for rate in p["tasks_per_s_by_tenth"])
        lines.append(f"  {p['label']:<12} {tenths}")
    lines.append("")
    lines += _write_counts(report["phases"])
    lines += _verdicts(report)
    return "\n".join(lines)


def _write_counts(phases: list[dict[str, Any]]) -> list[str]:
    """Per task, with --strace: what a task costs in socket writes and FTP round trips."""
    traced = [p for p in phases if p.get("writes_per_task")]
    if not traced:
        return []
    lines = ["writes per task (strace; tasks = RETR commands traced):"]
    for p in traced:
        w = p["writes_per_task"]
        verbs = " ".join(f"{verb} {n:g}" for verb, n in w["ftp_by_verb"].items())
        lines.append(
            f"  {p['label']:<12} AMQP {w['amqp_writes']:g}, FTP commands {w['ftp_commands']:g} "
            f"({verbs}), FTP data {w['ftp_data_writes']:g}, other {w['other_writes']:g} "
            f"[{w['tasks_traced']} tasks]"
        )
    return [*lines, ""]


def _table_row(p: dict[str, Any]) -> str:
    cpu = p["cpu_ms_per_task"]
    cpu_text = f"{cpu['worker']:.1f}/{cpu['ftp_server']:.1f}/{cpu['broker']:.1f}" if cpu else "-"
    rss = "/".join(_fmt(p["rss_mib_at"].get(f"{c}%")) for c in CHECKPOINTS)
    host = f"{p['host_cpu_busy_percent']:.0f}/{p['foreign_cpu_percent']:.0f}"
    return (
        f"{p['label']:<12} {p['ftp_connections']:>4} {p['tasks_per_s']:>8.1f} "
        f"{_fmt(p['ratio_to_bare'], 2):>9} {p['first_to_last_s']:>10.2f} "
        f"{p['start_to_first_s']:>9.2f} {cpu_text:>11} {_fmt(p['peak_rss_mib']):>8} {rss:>17} "
        f"{p['loop_thread_busy_percent']:>5.0f} {host:>10} {_fmt(p['exit_code'], 0):>4}"
    )


def _verdicts(report: dict[str, Any]) -> list[str]:
    target = report["target_ratio"]
    lines = []
    for config, summary in report["summary"].items():
        ratio = summary["median_ratio_to_bare"]
        rounds = f"median of {summary['rounds']} rounds: " if summary["rounds"] > 1 else ""
        text = f"{config}: {rounds}{summary['median_tasks_per_s']:.1f} tasks/s"
        if ratio is not None:
            verdict = "meets" if ratio >= target else "BELOW"
            text += f", node/bare = {ratio:.2f} ({verdict} the target ≥ {target:.2f})"
        lines.append(text)
    lines.append("")
    lines += [
        f"{p['label']}: {_phase_checks(p, report['notices_per_task'])}" for p in report["phases"]
    ]
    rate = report["replaced_system_tasks_per_s"]
    lines.append(f"The system being replaced managed about {rate:g} tasks/s.")
    return lines


def _phase_checks(p: dict[str, Any], notices_per_task: int) -> str:
    if p["error"]:
        return f"{p['received']}/{p['tasks']} forwarded; {p['error']}"
    expected = p["received"] * notices_per_task
    problems = []
    if p["received"] != p["tasks"]:
        problems.append(f"{p['received']}/{p['tasks']} forwarded")
    if p["log_notices"] != expected:
        problems.append(f"{p['log_notices']}/{expected} log notices")
    if p["exit_code"] != 0:
        problems.append(f"exit code {p['exit_code']} after SIGTERM")
    if p["crash_notices"] or p["left_in_input"] or p["duplicates"] or p["unexpected"]:
        problems.append(
            f"{p['crash_notices']} crashes, {p['left_in_input']} left in input, "
            f"{p['duplicates']} duplicates, {p['unexpected']} unexpected"
        )
    if p["log_warnings"]:
        problems.append(f"{p['log_warnings']} warning/error lines in the node's log")
    return "; ".join(problems) if problems else "all checks pass"


def storage_connection_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tasks/s of a real ulos-py node process vs a lean aio-pika+aioftp loop "
        "doing the same broker and FTP work (see benchmarks/README.md).",
    )
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per phase (default 2000)")
    parser.add_argument(
        "--prefetch", type=int, default=20, help="prefetch = tasks in flight (default 20)"
    )
    parser.add_argument(
        "--storage-connections",
        type=storage_connection_list,
        default=None,
        help="ULOS_STORAGE_CONNECTIONS of the node; a list like 4,20 runs one node phase "
        "per value (default: the prefetch count)",
    )
    parser.add_argument(
        "--bare-ftp-connections",
        type=int,
        default=None,
        help="FTP pool size of the baseline (default: the prefetch count)",
    )
    parser.add_argument("--no-bare", action="store_true", help="skip the baseline phase")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat every phase, order reversed every other round; medians are reported",
    )
    parser.add_argument(
        "--broker-url", default="amqp://guest:guest@127.0.0.1:5672/", help="RabbitMQ URL"
    )
    parser.add_argument(
        "--ftp-server",
        choices=("async", "threaded"),
        default="async",
        help="pyftpdlib server class in its own process (default async: one I/O loop)",
    )
    parser.add_argument(
        "--tmp-dir",
        type=Path,
        help="parent of the run's temp dir (FTP root, work dirs); default the system temp dir",
    )
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per phase")
    parser.add_argument("--seed", type=int, default=2031, help="seed of the zip content")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="record py-spy profiles here")
    parser.add_argument(
        "--strace",
        type=Path,
        metavar="DIR",
        help="count each worker's socket writes and FTP commands per task with strace "
        "(traces kept in DIR; it slows the worker: rates of such a run mean nothing)",
    )
    parser.add_argument(
        "--py-spy-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph"
    )
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.prefetch < 1 or args.rounds < 1:
        parser.error("--tasks must be at least 2, --prefetch and --rounds at least 1")
    args.storage_connections = args.storage_connections or [args.prefetch]
    args.bare_ftp_connections = args.bare_ftp_connections or args.prefetch
    return args


Report = dict[str, Any]


async def stopped_by_sigterm(work: Awaitable[Report]) -> Report:
    """Run, stopping (and cleaning up) on SIGTERM as on Ctrl-C."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await work


def run_and_report(
    args: argparse.Namespace,
    run_: Callable[[argparse.Namespace], Awaitable[Report]],
    render: Callable[[Report], str],
) -> int:
    """The table on stdout (on stderr with `--json`, the JSON then on stdout), the JSON into
    `--out`; the exit code: 0 when the report is ok, 130 when interrupted."""
    try:
        report = asyncio.run(stopped_by_sigterm(run_(args)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        say("interrupted: everything the benchmark started was stopped and deleted")
        return 130
    print(render(report), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if not report["ok"]:
        say("FAILED: see the problems above")
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv), run, render_table)


if __name__ == "__main__":
    sys.exit(main())
