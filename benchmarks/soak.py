#!/usr/bin/env python
"""Soak: many tasks through one `ulos-py node` process, to see what a long run leaves behind.

A short benchmark cannot show a slow leak: memory, descriptors or threads that grow per
task, a rate that sinks as they grow, a workspace, container or FTP session that outlives
its task. This one runs 10 000 tasks (every 200th through the python-check container, the
rest through the built-in `skip` stage) through a single worker, samples the process every
second and at each tenth of the tasks, and looks for anything left behind while the node
idles and after it stopped. See README.md here.

    python benchmarks/soak.py [--tasks 10000] [--docker-every 200] [--json | --out F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import statistics
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
from aio_pika.abc import AbstractIncomingMessage
from bench_fixtures import (
    Topology,
    make_zip,
    place_zips,
    publish_tasks,
    queue_depth,
    say,
    zip_folder,
)
from docker_throughput import (
    EXAMPLE,
    EXECUTOR,
    FOLDER,
    STAGE,
    ensure_image,
    labelled_containers,
    of_run,
    zips_without_pass,
)
from node_throughput import (
    NOTICES_PER_TASK,
    REGISTRY,
    Bench,
    DoneWatcher,
    NodeProcess,
    PhaseResult,
    Pids,
    _fmt,
    inspect_node_log,
    node_env,
    open_bench,
    quietly,
    run_and_report,
    run_tmp_dir,
    wait_for_done,
)
from proc_probes import (
    CpuSnapshot,
    child_pids,
    cpu_seconds,
    fd_count,
    rss_mib,
    tcp_sockets,
    thread_count,
)

from ulos_py.execution.docker_spec import load_docker_spec

TENTHS = range(1, 11)
WARM_UP_TENTH = 1
"""The first tenth of the tasks is the warm-up: imports, pools, caches and the allocator
settle there, so memory is judged against the end of it."""
GOAL_GROWTH_PERCENT = 10.0
SETTLE_SECONDS = 5.0
"""How long the FTP server may take to see the node's sessions close after it exited."""


# What is read from the node process: every second, and at each tenth of the tasks


@dataclass(frozen=True)
class Sample:
    at_s: float
    """Seconds since the node process was started."""
    done: int
    """Tasks that had arrived in `done` by then."""
    rss_mib: float | None
    hwm_mib: float | None
    cpu_s: float
    fds: int | None
    threads: int | None

    @classmethod
    def take(cls, pid: int, started: float, done: int) -> Sample:
        return cls(
            round(time.perf_counter() - started, 2),
            done,
            rss_mib(pid),
            rss_mib(pid, "VmHWM"),
            cpu_seconds(pid),
            fd_count(pid),
            thread_count(pid),
        )


class SoakWatcher(DoneWatcher):
    """The node_throughput watcher of `done` (arrivals, CPU over first→last), plus a sample
    of the node and the CPU readings of the run when each tenth of the tasks has arrived."""

    def __init__(self, task_ids: set[str], hop: dict[str, str], pids: Callable[[], Pids]) -> None:
        super().__init__(task_ids, hop, pids)
        self._marks = {math.ceil(self.total * k / 10): k for k in TENTHS}
        self.started = 0.0
        self.tenths: dict[int, tuple[Sample, CpuSnapshot]] = {}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        before = len(self.seen)
        await super().on_message(message)
        if len(self.seen) > before and (tenth := self._marks.get(len(self.seen))) is not None:
            pids = self._pids()
            sample = Sample.take(pids[0], self.started, len(self.seen))
            self.tenths[tenth] = sample, CpuSnapshot.take(*pids)


@dataclass(frozen=True)
class Tenth:
    """One tenth of the tasks: its rate, what it cost, and the node when it ended."""

    number: int
    tasks_per_s: float | None
    node_cpu_ms_per_task: float | None
    host_busy_percent: float | None
    foreign_percent: float | None
    """Host CPU no process of this run used: other load, which slows the tenth down."""
    end: Sample


def tenths_of(watcher: SoakWatcher, rates: list[float]) -> list[Tenth]:
    """Each tenth from the readings at its end and at the previous one's (the first task's
    for the first tenth)."""
    tenths = []
    done, before = 1, watcher.cpu_first
    for k in TENTHS:
        if k not in watcher.tenths:
            break
        sample, cpu = watcher.tenths[k]
        cost, shares = None, None
        if before is not None and sample.done > done:
            cost = round(1000 * (cpu.worker - before.worker) / (sample.done - done), 1)
            shares = cpu.host_shares_since(before)
        busy, foreign = shares or (None, None)
        rate = rates[k - 1] if k <= len(rates) else None
        tenths.append(Tenth(k, rate, cost, busy, foreign, sample))
        done, before = sample.done, cpu
    return tenths


class NoticeCounter:
    """Consumes `logs` during the run: 7 notices per task would otherwise pile up in the
    broker (70 000 for a default run) and slow it as the soak goes on, which a production
    node with its log consumer never sees."""

    def __init__(self) -> None:
        self.total = 0
        self.events: Counter[str] = Counter()
        self.passed: set[str] = set()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        self.total += 1
        body = json.loads(message.body)
        event = str(body.get("event"))
        self.events[event] += 1
        if event == "execution_finished" and body.get("outcome") == "pass":
            self.passed.add(str(body.get("taskId")))

    async def settled(self, expected: int) -> int:
        """The count once it reaches `expected` or has not moved for 2 s."""
        previous, still = -1, 0
        while self.total < expected and still < 10:
            still = still + 1 if self.total == previous else 0
            previous = self.total
            await asyncio.sleep(0.2)
        return self.total


async def sample_every(
    seconds: float, pid: int, watcher: SoakWatcher, samples: list[Sample]
) -> None:
    """Until cancelled: the curve the tenths alone would be too coarse to show."""
    while True:
        samples.append(Sample.take(pid, watcher.started, len(watcher.seen)))
        await asyncio.sleep(seconds)


# What may be left behind


@dataclass
class Leftovers:
    work_dir: list[str]
    """Entries under ULOS_WORK_DIR: one private workspace per delivery, each removed when
    its task ends (ulos_py/workspace.py); the directory itself is all that may stay."""
    node_tmp: list[str]
    """Entries under the node's TMPDIR (a directory of its own): nothing may be there."""
    containers: list[str] | None
    """Ids of containers of this run, all states; None when no docker task ran."""
    node_ftp_sessions: int | None
    """ESTABLISHED connections of the node to the FTP port (its pool); None once it exited."""
    node_other_tcp: int | None
    """The node's other ESTABLISHED TCP connections, the broker's aside: an FTP data
    connection left open would be one."""
    server_ftp_sessions: int
    """ESTABLISHED connections the FTP server holds on its port, whoever opened them."""
    server_data_connections: int
    """ESTABLISHED connections the FTP server holds on other ports: passive data ones."""
    node_children: int | None
    """Child processes of the node: 0 when it is the worker itself (ULOS_PROCESSES=1)."""


def entries(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def established_ports(pid: int, *, local: bool) -> Counter[int]:
    """How many ESTABLISHED TCP connections the process holds, by its local or remote port."""
    return Counter(
        s.local_port if local else s.remote_port
        for s in tcp_sockets(pid)
        if s.state == "ESTABLISHED"
    )


async def look_for_leftovers(
    bench: Bench, api: docker.APIClient | None, env: dict[str, str], node: int | None
) -> Leftovers:
    """What the node has left: `node` is its pid while it runs, None after it exited."""
    containers = None
    if api is not None:
        found = await asyncio.to_thread(labelled_containers, api)
        containers = [c["Id"][:12] for c in of_run(found, bench.topology.prefix)]
    port = bench.ftp.port
    server = established_ports(bench.ftp.pid, local=True)
    node_ftp = node_other = node_children = None
    if node is not None:
        to = established_ports(node, local=False)
        node_ftp = to[port]
        node_other = sum(to.values()) - node_ftp - to[bench.broker.port]
        node_children = len(child_pids(node))
    return Leftovers(
        entries(Path(env["ULOS_WORK_DIR"])),
        entries(Path(env["TMPDIR"])),
        containers,
        node_ftp,
        node_other,
        server[port],
        sum(server.values()) - server[port],
        node_children,
    )


async def leftovers_after_exit(
    bench: Bench, api: docker.APIClient | None, env: dict[str, str]
) -> Leftovers:
    """Once the FTP server has seen the closes (its loop may be a moment behind)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while True:
        left = await look_for_leftovers(bench, api, env, None)
        open_ = left.server_ftp_sessions + left.server_data_connections
        if open_ == 0 or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.2)


# The run


@dataclass
class SoakResult(PhaseResult):
    """node_throughput's phase result (rates, CPU, RSS, notices, exit code), and more."""

    node_pid: int = 0
    docker_tasks: int = 0
    docker_zips_without_pass: int = 0
    pass_notices: int = 0
    notice_events: dict[str, int] = field(default_factory=dict)
    tenths: list[Tenth] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    memory: dict[str, float | int | None] = field(default_factory=dict)
    idle: Leftovers | None = None
    stopped: Leftovers | None = None
    checks: list[dict[str, Any]] = field(default_factory=list)


def is_docker(index: int, every: int) -> bool:
    return every > 0 and index % every == every - 1


def prepare_tasks(bench: Bench) -> tuple[list[dict[str, Any]], list[str]]:
    """Every task's zip at a distinct path, and the tasks: every `--docker-every`th runs the
    python-check container on a submission that passes, the others the `skip` stage."""
    args = bench.args
    kinds = [is_docker(i, args.docker_every) for i in range(args.tasks)]
    root = bench.ftp.root
    skip_paths = iter(place_zips(root, "soak", kinds.count(False), bench.zip_data))
    docker_paths = place_zips(root, "soak-docker", kinds.count(True), zip_folder(EXAMPLE))
    in_order = iter(docker_paths)
    tasks = [
        bench.topology.task("soak", i, next(in_order), STAGE)
        if docker_task
        else bench.topology.task("soak", i, next(skip_paths))
        for i, docker_task in enumerate(kinds)
    ]
    return tasks, docker_paths


async def soak(bench: Bench, api: docker.APIClient | None) -> SoakResult:
    args = bench.args
    result = SoakResult("soak", "soak", 1, "node", args.storage_connections, args.tasks)
    tasks, docker_paths = await asyncio.to_thread(prepare_tasks, bench)
    result.docker_tasks = len(docker_paths)
    bodies = [json.dumps(t).encode() for t in tasks]
    keys = [t["routingTree"]["routingKey"] for t in tasks]
    await publish_tasks(bench.channel, bench.topology, bodies, keys)
    say(f"{len(tasks)} tasks queued ({len(docker_paths)} docker), starting the node")
    env = node_env(bench, args.storage_connections)
    env.update(TMPDIR=str(bench.tmp / "node-tmp"))  # node_env runs one worker in-process
    Path(env["TMPDIR"]).mkdir()
    node: NodeProcess | None = None
    watcher = SoakWatcher(
        {t["taskId"] for t in tasks},
        bench.topology.done_hop(),
        lambda: (node.pid if node else 0, bench.ftp.pid, bench.broker_pids),
    )
    notices = NoticeCounter()
    async with AsyncExitStack() as stack:
        for name, callback in (("done", watcher.on_message), ("logs", notices.on_message)):
            queue = await bench.channel.get_queue(bench.topology.queue(name), ensure=False)
            tag = await queue.consume(callback, no_ack=True)
            stack.push_async_callback(quietly, queue.cancel(tag))
        watcher.started = time.perf_counter()
        node = await NodeProcess.start(env, bench.tmp / "node.log")
        stack.push_async_callback(node.stop)
        result.node_pid = node.pid
        samples: list[Sample] = []
        sampler = asyncio.create_task(
            sample_every(args.sample_interval, node.pid, watcher, samples)
        )
        stack.callback(sampler.cancel)
        try:
            await wait_for_done(bench, watcher, node, "soak")
        except RuntimeError as exc:
            result.error = str(exc)
        result.fill_timing(watcher, watcher.started)
        if result.error is None:
            await asyncio.sleep(args.idle)  # the node idles: what stays now, stays
            result.idle = await look_for_leftovers(bench, api, env, node.pid)
        sampler.cancel()
        result.samples = [*samples, Sample.take(node.pid, watcher.started, len(watcher.seen))]
        result.peak_rss_mib = rss_mib(node.pid, "VmHWM")
        result.rss_mib_end = rss_mib(node.pid)
        result.exit_code = await node.stop()
        result.stopped = await leftovers_after_exit(bench, api, env)
        result.log_notices = await notices.settled(len(watcher.seen) * NOTICES_PER_TASK)
    result.tenths = tenths_of(watcher, result.tasks_per_s_by_tenth)
    result.pass_notices = len(notices.passed & watcher.seen)
    result.notice_events = dict(notices.events)
    if bench.broker_lost is None:
        result.crash_notices = await queue_depth(bench.channel, bench.topology.queue("crashes"))
        result.left_in_input = await queue_depth(bench.channel, bench.topology.queue("input"))
    result.docker_zips_without_pass = len(
        await asyncio.to_thread(zips_without_pass, bench.ftp.root, docker_paths)
    )
    inspect_node_log(node.log_path, result)
    result.memory = memory_figures(result, math.ceil(args.tasks * WARM_UP_TENTH / 10))
    result.checks = checks(result)
    return result


def memory_figures(result: SoakResult, warm_up_done: int) -> dict[str, float | int | None]:
    """RSS at the end of the warm-up against the highest after it, and the trend per task."""
    ends = [t.end for t in result.tenths]
    warm = next((s for s in ends if s.done == warm_up_done), None)
    after = [s for s in [*result.samples, *ends] if s.done > warm_up_done and s.rss_mib]
    if warm is None or warm.rss_mib is None or not after:
        return {}
    peak = max(after, key=lambda s: s.rss_mib or 0.0)
    assert peak.rss_mib is not None
    trend = None
    points = [(s.done, s.rss_mib) for s in result.samples if s.done > warm_up_done and s.rss_mib]
    if len({done for done, _ in points}) > 1:
        slope, _ = statistics.linear_regression(*zip(*points, strict=True))
        trend = round(slope * 1000, 3)
    last = result.samples[-1] if result.samples else None
    return {
        "rss_warm_mib": warm.rss_mib,
        "peak_rss_after_warm_mib": peak.rss_mib,
        "growth_percent": round(100 * (peak.rss_mib - warm.rss_mib) / warm.rss_mib, 1),
        "rss_end_mib": result.rss_mib_end,
        "vm_hwm_mib": result.peak_rss_mib,
        "trend_mib_per_1000_tasks": trend,
        "fds_warm": warm.fds,
        "fds_end": last.fds if last else None,
        "threads_warm": warm.threads,
        "threads_end": last.threads if last else None,
    }


def checks(r: SoakResult) -> list[dict[str, Any]]:
    """Every verdict of the run, each with what it saw; the run passes when all do."""
    expected_notices = r.received * NOTICES_PER_TASK
    growth = r.memory.get("growth_percent")
    found = [
        (
            r.error is None and r.received == r.tasks and not (r.duplicates or r.unexpected),
            f"{r.received}/{r.tasks} tasks forwarded to done, {r.duplicates} duplicates, "
            f"{r.unexpected} unexpected" + (f"; {r.error}" if r.error else ""),
        ),
        (
            r.log_notices == expected_notices and r.pass_notices == r.received,
            f"{r.log_notices}/{expected_notices} log notices, "
            f"{r.pass_notices}/{r.received} tasks with a pass outcome",
        ),
        (
            r.crash_notices == 0 and r.left_in_input == 0,
            f"{r.crash_notices} crash notices, {r.left_in_input} tasks left in input",
        ),
        (
            r.docker_zips_without_pass == 0,
            f"{r.docker_tasks - r.docker_zips_without_pass}/{r.docker_tasks} docker tasks' "
            "zips hold the container's PASS"
            if r.docker_tasks
            else "no docker task (--docker-every 0): no container ran",
        ),
        (r.exit_code == 0, f"exit code {r.exit_code} after SIGTERM"),
        (r.log_warnings == 0, f"{r.log_warnings} warning/error lines in the node's log"),
        (
            growth is not None and growth < GOAL_GROWTH_PERCENT,
            f"RSS growth after warm-up {_fmt(growth)} % (goal < {GOAL_GROWTH_PERCENT:g} %)",
        ),
        *leftover_checks(r),
    ]
    return [{"ok": bool(ok), "check": text} for ok, text in found]


def leftover_checks(r: SoakResult) -> list[tuple[bool, str]]:
    pool = r.ftp_connections
    found = []
    for when, left in (("idle", r.idle), ("after SIGTERM", r.stopped)):
        if left is None:
            found.append((False, f"{when}: not looked at (the run stopped early)"))
            continue
        things = left.work_dir + left.node_tmp + (left.containers or [])
        found.append(
            (
                not things,
                f"{when}: {len(left.work_dir)} work dir entries, {len(left.node_tmp)} temp "
                f"files, {_count(left.containers)} containers"
                + (f" ({', '.join(things[:3])}…)" if things else ""),
            )
        )
        data = left.server_data_connections
        if left.node_ftp_sessions is not None:
            found.append(
                (
                    left.node_ftp_sessions <= pool
                    and left.node_other_tcp == 0
                    and data == 0
                    and left.node_children == 0,
                    f"{when}: node holds {left.node_ftp_sessions} FTP sessions (pool {pool}) "
                    f"and {left.node_other_tcp} other connections, FTP server {data} data "
                    f"connections; node has {left.node_children} child processes",
                )
            )
        else:
            found.append(
                (
                    left.server_ftp_sessions == 0 and data == 0,
                    f"{when}: FTP server holds {left.server_ftp_sessions} sessions and {data} "
                    "data connections",
                )
            )
    return found


def _count(items: list[str] | None) -> str:
    return "-" if items is None else str(len(items))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    wall = time.perf_counter()
    other_stages = (STAGE,) if args.docker_every else ()
    topology = Topology(f"bench-{uuid.uuid4().hex[:8]}", other_stages=other_stages)
    async with AsyncExitStack() as stack:
        tmp = run_tmp_dir(stack, args)
        api = None
        if args.docker_every:
            api = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
            stack.callback(api.close)
            image = load_docker_spec(EXECUTOR, FOLDER).settings.image
            await asyncio.to_thread(ensure_image, api, REGISTRY, image)
        bench = await open_bench(stack, args, topology, tmp, make_zip(args.seed), "async")
        say(f"names {topology.prefix}.*, FTP 127.0.0.1:{bench.ftp.port}, tmp {tmp.name}")
        result = await soak(bench, api)
    return build_report(args, result, len(bench.zip_data), time.perf_counter() - wall)


# The report


def build_report(
    args: argparse.Namespace, result: SoakResult, zip_bytes: int, wall_s: float
) -> dict[str, Any]:
    return {
        "benchmark": "soak",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "tasks": args.tasks,
        "prefetch": args.prefetch,
        "storage_connections": args.storage_connections,
        "docker_every": args.docker_every,
        "zip_bytes": zip_bytes,
        "goal_growth_percent": GOAL_GROWTH_PERCENT,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "result": asdict(result),
        "wall_s": round(wall_s, 1),
        "ok": all(c["ok"] for c in result.checks),
    }


def render_table(report: dict[str, Any]) -> str:
    r = report["result"]
    docker_text = (
        f"{r['docker_tasks']} through the {EXECUTOR} container (every {report['docker_every']}th)"
        if report["docker_every"]
        else "no docker task"
    )
    lines = [
        f"ulos-py soak: {report['tasks']} tasks through one node (ULOS_PROCESSES=1, prefetch "
        f"{report['prefetch']}, {report['storage_connections']} FTP connections), "
        f"{docker_text}, {report['zip_bytes'] / 1024:.1f} KiB zips, {report['host']['cpus']} CPUs",
        f"sampled: the node process itself (pid {r['node_pid']}; with ULOS_PROCESSES=1 it runs "
        "the worker in-process), every second and at each tenth",
        "",
        f"{'tenth':>5} {'done':>6} {'at s':>7} {'tasks/s':>8} {'node CPU':>8} "
        f"{'RSS':>6} {'HWM':>6} {'fds':>5} {'threads':>7} {'host CPU %':>10}",
        f"{'':>5} {'':>6} {'':>7} {'':>8} {'ms/task':>8} "
        f"{'MiB':>6} {'MiB':>6} {'':>5} {'':>7} {'busy/frgn':>10}",
        *tenth_rows(r),
        "",
        *summary_lines(report),
        "",
        "checks:",
        *(f"  {'ok  ' if c['ok'] else 'FAIL'} {c['check']}" for c in r["checks"]),
        f"wall time {report['wall_s']:.0f} s; {'SOAK OK' if report['ok'] else 'SOAK FAILED'}",
    ]
    return "\n".join(lines)


def tenth_rows(r: dict[str, Any]) -> list[str]:
    """One row a tenth: its rate, the node's CPU per task over it, the sample at its end."""
    rows = []
    for t in r["tenths"]:
        s = t["end"]
        host = f"{_fmt(t['host_busy_percent'], 0)}/{_fmt(t['foreign_percent'], 0)}"
        note = "  warm-up" if t["number"] == WARM_UP_TENTH else ""
        rows.append(
            f"{t['number']:>5} {s['done']:>6} {s['at_s']:>7.1f} {_fmt(t['tasks_per_s']):>8} "
            f"{_fmt(t['node_cpu_ms_per_task']):>8} {_fmt(s['rss_mib']):>6} "
            f"{_fmt(s['hwm_mib']):>6} {_fmt(s['fds'], 0):>5} {_fmt(s['threads'], 0):>7} "
            f"{host:>10}{note}"
        )
    return rows


def summary_lines(report: dict[str, Any]) -> list[str]:
    r, m = report["result"], report["result"]["memory"]
    rates = r["tasks_per_s_by_tenth"]
    lines = []
    if len(rates) == len(TENTHS):
        start, end = rates[WARM_UP_TENTH], rates[-1]
        lines.append(
            f"rate: start (tenth {WARM_UP_TENTH + 1}) {start:.1f} tasks/s, end (tenth 10) "
            f"{end:.1f}, end/start {end / start:.2f}; overall {r['tasks_per_s']:.1f} tasks/s "
            f"over {r['first_to_last_s']:.0f} s, first task {r['start_to_first_s']:.1f} s "
            "after the node started"
        )
    if m:
        growth = m["growth_percent"]
        verdict = "met" if growth < report["goal_growth_percent"] else "MISSED"
        lines += [
            f"memory: RSS {m['rss_warm_mib']:.1f} MiB at the end of the warm-up, peak "
            f"{m['peak_rss_after_warm_mib']:.1f} after it ({growth:+.1f} %, goal "
            f"< {report['goal_growth_percent']:g} %: {verdict}), {_fmt(m['rss_end_mib'])} at "
            f"the end; VmHWM {_fmt(m['vm_hwm_mib'])} MiB",
            f"        trend after the warm-up {_fmt(m['trend_mib_per_1000_tasks'], 2)} MiB per "
            f"1000 tasks; fds {m['fds_warm']} → {m['fds_end']}, threads {m['threads_warm']} → "
            f"{m['threads_end']}",
        ]
    cpu = r["cpu_ms_per_task"]
    if cpu:
        lines.append(
            f"CPU ms/task over first→last: node {cpu['worker']:.1f}, FTP server "
            f"{cpu['ftp_server']:.1f}, RabbitMQ {cpu['broker']:.1f}; node loop thread "
            f"{r['loop_thread_busy_percent']:.0f} % busy; host {r['host_cpu_busy_percent']:.0f} % "
            f"busy, {r['foreign_cpu_percent']:.0f} % of it not this run's"
        )
    lines += ["", f"{'left behind':<26} {'idle':>6} {'after SIGTERM':>14}"]
    idle, stopped = r["idle"] or {}, r["stopped"] or {}
    for key, label in (
        ("work_dir", "work dir entries"),
        ("node_tmp", "node TMPDIR entries"),
        ("containers", "containers (all states)"),
        ("node_ftp_sessions", "node→FTP sessions"),
        ("node_other_tcp", "node other TCP (not MQ)"),
        ("server_ftp_sessions", "FTP server sessions"),
        ("server_data_connections", "FTP data connections"),
        ("node_children", "node child processes"),
    ):
        lines.append(f"{label:<26} {_leftover(idle.get(key)):>6} {_leftover(stopped.get(key)):>14}")
    return lines


def _leftover(value: list[str] | int | None) -> str:
    return "-" if value is None else str(len(value) if isinstance(value, list) else value)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Soak: many tasks through one ulos-py node process; rate at the start "
        "and the end, memory growth, and what is left behind (see benchmarks/README.md).",
    )
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks (default 10000)")
    parser.add_argument("--prefetch", type=int, default=20, help="tasks in flight (default 20)")
    parser.add_argument(
        "--storage-connections",
        type=int,
        default=4,
        help="ULOS_STORAGE_CONNECTIONS, the node's FTP pool (default 4)",
    )
    parser.add_argument(
        "--docker-every",
        type=int,
        default=200,
        help="every Nth task runs the python-check container (default 200; 0: none)",
    )
    parser.add_argument(
        "--idle", type=float, default=3, help="seconds the node idles before the leftover check"
    )
    parser.add_argument(
        "--sample-interval", type=float, default=1.0, help="seconds between samples (default 1)"
    )
    parser.add_argument(
        "--broker-url", default="amqp://guest:guest@127.0.0.1:5672/", help="RabbitMQ URL"
    )
    parser.add_argument(
        "--tmp-dir", type=Path, help="parent of the run's temp dir (FTP root, work dir, log)"
    )
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed for all tasks")
    parser.add_argument("--seed", type=int, default=2031, help="seed of the zip content")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    args = parser.parse_args(argv)
    if args.tasks < 100 or args.prefetch < 1 or args.storage_connections < 1:
        parser.error("--tasks must be at least 100, --prefetch and --storage-connections 1")
    if args.docker_every < 0:
        parser.error("--docker-every must be 0 or more")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv), run, render_table)


if __name__ == "__main__":
    sys.exit(main())
