"""How fast does the tracker store notices, against a bare loop doing the same work and against
what one node emits, how fast does it answer at scale, and does its memory stay flat?

    python benchmarks/tracker_ingest.py            # the issue's sizes (~10 min on a quiet VM)
    python benchmarks/tracker_ingest.py --short    # a quick check (a few minutes)

One run, in this order (see benchmarks/README.md, "tracker_ingest.py"):

1. **node reference**: a real `ulos-py node` (built-in `skip` executor, prefetch 20, 10 KB
   zips) at full speed, through `node_throughput.py`'s machinery; its notices per second =
   7 x its tasks per second.
2. per database (a SQLite file; a private PostgreSQL cluster started like the tests'):
   **ingest**: N notices (10 per task) put in a queue, consumed by the bare loop
   (`tracker_bare.py`, its own process: consume → batch → one INSERT → commit → ack), then
   put in again and consumed by a real `ulos-py tracker` process. Rates are from the first
   to the last commit (start-up excluded); the tracker's RSS is sampled every second from
   /proc, and both processes' CPU per notice is read from /proc (robust to other load).
   **reads**: a fresh database filled with `--tasks` tasks and 7 notices each
   (`tracker_bulk.py`), a real `ulos-py tracker` started on it, and `--probes` requests of
   each kind timed over HTTP (uvicorn on loopback): one journey, and filtered list pages.
3. the verdicts, one line per target.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import node_throughput
import tracker_bulk
from bench_fixtures import Broker, say
from proc_probes import cpu_seconds, listening_pids, process_tree, rss_mib

from tests.support.journeys import Node
from tests.support.postgres import start_postgres
from ulos_py.tracker.store import Store

REPO = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.7
TARGET_NODES = 10.0
TARGET_P95_MS = 20.0
RSS_FLAT_MIB = 10.0
"""RSS may rise this much from 10 % of the ingest to its end and still count as flat."""


def bodies(count: int) -> list[bytes]:
    """`count` notices, 10 per task: a whole first stage of three, then three of the next."""
    out: list[bytes] = []
    for i in range(count // 10):
        node = Node(f"b-{i:06}", node_id=f"n{i % 7}", start=i * 30)
        notices = [*node.stage(("a", "b", "c")), *node.stage(("b", "c"))[:3]]
        out += [json.dumps(n.body).encode() for n in notices]
    return out


async def fill_queue(channel: aio_pika.abc.AbstractChannel, name: str, data: list[bytes]) -> None:
    await channel.declare_queue(name, durable=True)
    for start in range(0, len(data), 500):
        chunk = data[start : start + 500]
        await asyncio.gather(
            *(channel.default_exchange.publish(aio_pika.Message(b), name) for b in chunk)
        )


def tracker_env(args: argparse.Namespace, database: str, queue: str, port: int) -> dict[str, str]:
    broker = Broker.parse(args.broker_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MESSAGE_BROKER_", "ULOS_"))}
    env.update(
        MESSAGE_BROKER_HOST=broker.host,
        MESSAGE_BROKER_PORT=str(broker.port),
        MESSAGE_BROKER_USERNAME=broker.username,
        MESSAGE_BROKER_PASSWORD=broker.password,
        ULOS_TRACKER_QUEUE=queue,
        ULOS_TRACKER_PORT=str(port),
        ULOS_TRACKER_DATABASE=database,
        ULOS_LOG_FORMAT="json",
        ULOS_LOG_LEVEL="warning",
        ULOS_TRACKER_WRITER=args.writer,
    )
    return env


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Ingest:
    side: str
    per_s: float = 0.0
    seconds: float = 0.0
    cpu_ms_per_notice: float = 0.0
    """The consuming process's CPU (all its threads) per notice, first to last commit."""
    loop_cpu_ms_per_notice: float = 0.0
    """Its main thread's (the event loop's): what bounds the rate once a core is free."""
    broker_cpu_ms_per_notice: float = 0.0
    """The broker's CPU per notice, from the consumer's start to its end."""
    db_cpu_ms_per_notice: float | None = None
    """PostgreSQL's server processes' CPU per notice, likewise (None: SQLite, in-process)."""
    rss_mib: list[float] = field(default_factory=list)
    """The tracker's VmRSS every second from its first commit to its last."""
    peak_rss_mib: float | None = None


class Servers:
    """CPU seconds so far of the broker and of the database server the run uses."""

    def __init__(self, broker_port: int, db_pids: Callable[[], list[int]]) -> None:
        self.broker = listening_pids(broker_port)
        self.db_pids = db_pids

    def cpu(self) -> tuple[float, float | None]:
        broker = sum(map(cpu_seconds, self.broker))
        pids = self.db_pids()  # with the backends of connections closed meanwhile
        return broker, sum(cpu_seconds(p, reaped=True) for p in pids) if pids else None

    def per_notice(self, result: Ingest, before: tuple[float, float | None], total: int) -> None:
        broker, db = self.cpu()
        result.broker_cpu_ms_per_notice = (broker - before[0]) * 1000 / total
        if db is not None and before[1] is not None:
            result.db_cpu_ms_per_notice = (db - before[1]) * 1000 / total


async def bare_ingest(
    args: argparse.Namespace, url: str, queue: str, total: int, servers: Servers
) -> Ingest:
    """The bare loop over the queue (`url` "-": consume and ack only, no database)."""
    script = REPO / "benchmarks" / "tracker_bare.py"
    before = servers.cpu()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), url, queue, str(total), args.broker_url,
        stdout=subprocess.PIPE,
    )  # fmt: skip
    out, _ = await process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"the bare loop failed (exit code {process.returncode})")
    done = json.loads(out.decode().strip().splitlines()[-1])
    seconds = done["last_at"] - done["first_at"]
    result = Ingest("bare" if url != "-" else "consume", (total - done["first"]) / seconds, seconds)
    result.peak_rss_mib = done["peak_rss_mib"]
    result.cpu_ms_per_notice = done["cpu_seconds"] * 1000 / (total - done["first"])
    result.loop_cpu_ms_per_notice = done["loop_cpu_seconds"] * 1000 / (total - done["first"])
    servers.per_notice(result, before, total)
    return result


async def start_tracker(
    args: argparse.Namespace, url: str, queue: str, log: Path
) -> tuple[asyncio.subprocess.Process, str]:
    port = free_port()
    with log.open("wb") as out:
        process = await asyncio.create_subprocess_exec(
            *_ulos("tracker"), env=tracker_env(args, url, queue, port), stdout=out, stderr=out,
            cwd=REPO, start_new_session=True,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, timeout=5) as client:
        for _ in range(600):
            if process.returncode is not None:
                raise RuntimeError(f"the tracker stopped at start: {log.read_text()[-2000:]}")
            with suppress(httpx.HTTPError):
                if (await client.get("/healthz")).status_code == 200:
                    return process, base
            await asyncio.sleep(0.2)
    raise RuntimeError("the tracker did not answer /healthz within 120 s")


def _ulos(command: str) -> list[str]:
    script = Path(sys.executable).parent / "ulos-py"
    return (
        [str(script), command] if script.is_file() else [sys.executable, "-m", "ulos_py", command]
    )


async def stop(process: asyncio.subprocess.Process) -> int | None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode


async def tracker_ingest(
    args: argparse.Namespace, url: str, queue: str, total: int, log: Path, servers: Servers
) -> Ingest:
    """A real tracker on the filled queue: its rate from /healthz (`stored` and
    `lastCommit`), its RSS every second, its CPU and its main thread's from /proc."""
    await (await Store.open(url)).close()  # migrated before the clock runs, as the bare's
    before = servers.cpu()
    process, base = await start_tracker(args, url, queue, log)
    result = Ingest("tracker")
    profiler = await _profile(args, process.pid, log.stem)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            first: tuple[int, float] | None = None
            cpu_at_first = loop_at_first = 0.0
            next_sample = 0.0
            while True:
                health = (await client.get("/healthz")).json()
                stored, last = health["stored"], health["lastCommit"]
                if stored and first is None:
                    first, cpu_at_first = (stored, _epoch(last)), _tree_cpu(process.pid)
                    loop_at_first = cpu_seconds(process.pid, thread=process.pid)
                if first is not None and time.monotonic() >= next_sample:
                    result.rss_mib.append(_tree_rss(process.pid))
                    next_sample = time.monotonic() + 1.0
                if stored >= total:
                    break
                if process.returncode is not None:
                    raise RuntimeError(f"the tracker stopped: {log.read_text()[-2000:]}")
                await asyncio.sleep(0.5)  # /healthz writes (a probe): not too often
            assert first is not None
            result.rss_mib.append(_tree_rss(process.pid))
            result.peak_rss_mib = _tree_rss(process.pid, "VmHWM")
            cpu = _tree_cpu(process.pid) - cpu_at_first
            loop_cpu = cpu_seconds(process.pid, thread=process.pid) - loop_at_first
            servers.per_notice(result, before, total)
            result.cpu_ms_per_notice = cpu * 1000 / (total - first[0])
            result.loop_cpu_ms_per_notice = loop_cpu * 1000 / (total - first[0])
            result.seconds = _epoch(last) - first[1]
            result.per_s = (total - first[0]) / result.seconds
            counted = (await client.get("/api/counts")).json()
            if counted["notices"] != total:
                raise RuntimeError(f"the tracker stored {counted['notices']} of {total} notices")
    finally:
        await stop(process)
        if profiler is not None:  # py-spy writes its file when the tracker exits
            await asyncio.wait_for(profiler.wait(), 60)
    return result


def _tree_cpu(pid: int) -> float:
    """CPU seconds of the tracker and its writing process (ULOS_TRACKER_WRITER=process)."""
    return sum(cpu_seconds(p) for p in process_tree(pid))


def _tree_rss(pid: int, field: str = "VmRSS") -> float:
    """MiB of the tracker and its writing process, added up."""
    return sum(rss_mib(p, field) or 0.0 for p in process_tree(pid))


async def _profile(
    args: argparse.Namespace, pid: int, label: str
) -> asyncio.subprocess.Process | None:
    """`--py-spy DIR`: the tracker's GIL-holding stacks, folded, 100 Hz (slows it a little:
    quote no rate from a profiled run)."""
    if args.py_spy is None:
        return None
    args.py_spy.mkdir(parents=True, exist_ok=True)
    local = Path(sys.executable).parent / "py-spy"
    return await asyncio.create_subprocess_exec(
        str(local) if local.is_file() else "py-spy", "record", "--pid", str(pid),
        "--rate", "100", "--gil", "--nonblocking", "--format", "raw",
        "--output", str(args.py_spy / f"{label}.folded"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


def _epoch(when: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(when).timestamp()


async def reads(args: argparse.Namespace, url: str, log: Path) -> dict[str, Any]:
    """p95 ms of each read at `--tasks` tasks (7 notices each), through uvicorn."""
    started = time.perf_counter()
    await tracker_bulk.fill(url, args.tasks)
    filled = time.perf_counter() - started
    say(f"  filled {args.tasks} tasks, {7 * args.tasks} notices in {filled:.0f} s")
    queue = f"bench-tracker-{uuid.uuid4().hex[:8]}"
    connection = await aio_pika.connect_robust(args.broker_url)
    channel = await connection.channel()
    await channel.declare_queue(queue, durable=True)
    try:
        return await _probe(args, url, queue, log, filled)
    finally:
        await channel.queue_delete(queue)
        await connection.close()


async def _probe(
    args: argparse.Namespace, url: str, queue: str, log: Path, filled: float
) -> dict[str, Any]:
    """Each kind of request `--probes` times in a row, after a warm-up: wall ms of each, and
    the CPU the tracker process (and PostgreSQL's server processes) spent per request."""
    process, base = await start_tracker(args, url, queue, log)
    count, states = args.tasks, ["passed", "failed", "stuck"]
    owners, stages = tracker_bulk.OWNERS, tracker_bulk.STAGES

    def task_id() -> str:
        return f"r-{random.randrange(count):07}"

    result: dict[str, Any] = {"fill_seconds": round(filled, 1), "p95_ms": {}, "p50_ms": {}}
    result["cpu_ms_per_request"] = {}
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            result["stored"] = (await client.get("/api/counts")).json()
            pages = []
            for state in [*states, "waiting"]:
                first = (await client.get("/api/tasks", params={"state": state})).json()
                if first["next"] is not None:
                    pages.append(f"/api/tasks?state={state}&cursor={first['next']}")
            probes: dict[str, Any] = {
                "journey": lambda: f"/api/tasks/{task_id()}",
                "list owner+state": lambda: (
                    f"/api/tasks?owner=o{random.randrange(owners)}&state={random.choice(states)}"
                ),
                "list state": lambda: f"/api/tasks?state={random.choice(states)}",
                "list waiting": lambda: "/api/tasks?state=waiting",
                "list running": lambda: "/api/tasks?state=running",
                "list stage": lambda: f"/api/tasks?stage=s{random.randrange(stages)}",
                "list page 2": lambda: random.choice(pages),
                # the search box: a whole id in capitals (one task), an id but its last two
                # digits (100 tasks spread over the week), a text no task holds
                "search id": lambda: f"/api/tasks?q={task_id().upper()}",
                "search part": lambda: f"/api/tasks?q={task_id()[:-2]}",
                "search none": lambda: f"/api/tasks?q=zz{random.randrange(count)}",
                "dashboard search": lambda: f"/tasks?q={task_id()[:-2]}",
            }
            for name, probe in probes.items():
                for _ in range(10):
                    await _timed(client, probe())
                timings = []
                cpu_before = _cpu(process.pid, url)
                for _ in range(args.probes):
                    timings.append((await _timed(client, probe()))[0])
                cpu = (_cpu(process.pid, url) - cpu_before) * 1000 / args.probes
                result["p95_ms"][name] = round(statistics.quantiles(timings, n=20)[18], 1)
                result["p50_ms"][name] = round(statistics.median(timings), 1)
                result["cpu_ms_per_request"][name] = round(cpu, 2)
    finally:
        await stop(process)
    return result


def _cpu(pid: int, url: str) -> float:
    """CPU seconds of the tracker process, plus its PostgreSQL server's if it uses one."""
    total = cpu_seconds(pid)
    if url.startswith("postgresql"):
        total += sum(cpu_seconds(p) for p in _postgres_pids())
    return total


def _postgres_pids() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if (entry / "comm").read_text().strip() == "postgres":
                    pids.append(int(entry.name))
    return pids


async def _timed(client: httpx.AsyncClient, path: str) -> tuple[float, str]:
    started = time.perf_counter()
    answer = await client.get(path)
    took = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise RuntimeError(f"GET {path}: {answer.status_code} {answer.text[:200]}")
    return took, answer.text


async def database_run(
    args: argparse.Namespace,
    label: str,
    new_url: Any,
    tmp: Path,
    db_pids: Callable[[], list[int]] = list,
) -> dict[str, Any]:
    data = bodies(args.notices)
    connection = await aio_pika.connect_robust(args.broker_url)
    channel = await connection.channel()
    result: dict[str, Any] = {"database": label, "notices": len(data)}
    servers = Servers(Broker.parse(args.broker_url).port, db_pids)
    try:
        for side in ("bare", "tracker") if args.phase != "reads" else ():
            queue = f"bench-tracker-{uuid.uuid4().hex[:8]}"
            await fill_queue(channel, queue, data)
            say(f"{label} {side}: {len(data)} notices queued")
            try:
                if side == "bare":
                    ingest = await bare_ingest(args, new_url(), queue, len(data), servers)
                else:
                    log = tmp / f"tracker-{label}.log"
                    ingest = await tracker_ingest(args, new_url(), queue, len(data), log, servers)
            finally:
                await channel.queue_delete(queue)
            say(f"  {ingest.per_s:.0f} notices/s, {ingest.cpu_ms_per_notice:.3f} CPU ms/notice")
            result[side] = asdict(ingest)
    finally:
        await connection.close()
    if args.phase != "reads":
        result["ratio"] = result["tracker"]["per_s"] / result["bare"]["per_s"]
    if args.tasks and args.phase != "ingest":
        say(f"{label} reads: filling {args.tasks} tasks")
        result["reads"] = await reads(args, new_url(), tmp / f"tracker-reads-{label}.log")
    return result


async def ceiling(args: argparse.Namespace) -> dict[str, Any]:
    """The bare loop storing nothing (consume → batch → ack): what any consumer of the queue
    through the tracker's adapter reaches on this machine, and what the broker costs."""
    data = bodies(args.notices)
    connection = await aio_pika.connect_robust(args.broker_url)
    channel = await connection.channel()
    queue = f"bench-tracker-{uuid.uuid4().hex[:8]}"
    try:
        await fill_queue(channel, queue, data)
        say(f"consume only: {len(data)} notices queued")
        servers = Servers(Broker.parse(args.broker_url).port, list)
        ingest = await bare_ingest(args, "-", queue, len(data), servers)
    finally:
        await channel.queue_delete(queue)
        await connection.close()
    say(f"  {ingest.per_s:.0f} notices/s, {ingest.cpu_ms_per_notice:.3f} CPU ms/notice")
    return asdict(ingest)


async def node_reference(args: argparse.Namespace) -> dict[str, Any]:
    """One node phase of node_throughput.py: the rate of notices one node emits."""
    argv = ["--tasks", str(args.node_tasks), "--no-bare", "--broker-url", args.broker_url]
    report = await node_throughput.run(node_throughput.parse_args(argv))
    phase = report["phases"][0]
    if phase["error"] or not report["ok"]:
        raise RuntimeError(f"the node reference phase failed: {phase['error']}")
    per_s = phase["tasks_per_s"]
    return {"tasks_per_s": per_s, "notices_per_s": per_s * node_throughput.NOTICES_PER_TASK}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "load_average": os.getloadavg(),
        "args": {k: v for k, v in vars(args).items() if not k.startswith("_")},
    }
    if args.node_tasks:
        say(f"node reference: {args.node_tasks} tasks through one ulos-py node")
        report["node"] = await node_reference(args)
        say(f"  {report['node']['notices_per_s']:.0f} notices/s")
    if args.phase != "reads":
        report["ceiling"] = await ceiling(args)
    report["databases"] = []
    async with AsyncExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-tracker-")))
        if args.only != "postgresql":
            names = iter(range(1000))
            report["databases"].append(
                await database_run(
                    args, "sqlite", lambda: f"sqlite:///{tmp}/t{next(names)}.sqlite3", tmp
                )
            )
        if args.only != "sqlite":
            cluster = start_postgres()
            server = next(cluster)
            stack.callback(cluster.close)
            postmaster = listening_pids(server.port)

            def postgres() -> list[int]:
                return [p for root in postmaster for p in process_tree(root)]

            report["databases"].append(
                await database_run(args, "postgresql", server.create_database, tmp, postgres)
            )
    report["load_average_end"] = os.getloadavg()
    report["verdicts"] = verdicts(report)
    return report


def _rss_points(samples: list[float]) -> tuple[float, float, float]:
    """RSS at 10 %, at the middle and at the end of the ingest."""
    if not samples:
        return (0.0, 0.0, 0.0)
    return samples[len(samples) // 10], samples[len(samples) // 2], samples[-1]


def verdicts(report: dict[str, Any]) -> list[str]:
    lines = []
    node = report.get("node", {}).get("notices_per_s")
    if "ceiling" in report:
        top = report["ceiling"]["per_s"]
        lines.append(
            f"INFO ceiling: consume and ack only, no database: {top:.0f} notices/s"
            + (f" = {top / node:.1f}x one node's notice rate" if node else "")
        )
    for db in report["databases"]:
        label = db["database"]
        if "reads" in db:
            lines.append(_reads_verdict(label, db["reads"]))
        if "tracker" not in db:
            continue
        tracker = db["tracker"]
        ok = db["ratio"] >= TARGET_RATIO
        lines.append(
            f"{'MET ' if ok else 'MISS'} {label}: tracker/bare {db['ratio']:.2f} "
            f"(target >= {TARGET_RATIO})"
        )
        if node:
            times = tracker["per_s"] / node
            lines.append(
                f"{'MET ' if times >= TARGET_NODES else 'MISS'} {label}: tracker {times:.1f}x "
                f"one node's notice rate (target >= {TARGET_NODES:g}x)"
            )
        early, middle, end = _rss_points(tracker["rss_mib"])
        flat = end - early <= RSS_FLAT_MIB
        lines.append(
            f"{'MET ' if flat else 'MISS'} {label}: tracker RSS {early:.0f} → {middle:.0f} → "
            f"{end:.0f} MiB at 10 %/50 %/100 % of the ingest, peak {tracker['peak_rss_mib']} MiB "
            f"(flat: at most +{RSS_FLAT_MIB:g} MiB)"
        )
    return lines


def _reads_verdict(label: str, reads: dict[str, Any]) -> str:
    p95 = reads["p95_ms"]
    ok = max(p95.values()) < TARGET_P95_MS
    mark = ("MET " if ok else "MISS") if label == "sqlite" else "INFO"
    return (
        f"{mark} {label}: p95 at {reads['stored']['tasks']} tasks / "
        f"{reads['stored']['notices']} notices: "
        + ", ".join(f"{k} {v:.1f} ms" for k, v in p95.items())
        + f" (target < {TARGET_P95_MS:g} ms on SQLite)"
    )


def render(report: dict[str, Any]) -> str:
    out = [
        f"tracker benchmark {report['when']}, load average "
        f"{' '.join(f'{v:.1f}' for v in report['load_average'])} at start, "
        f"{' '.join(f'{v:.1f}' for v in report['load_average_end'])} at end",
    ]
    if "node" in report:
        node = report["node"]
        out.append(
            f"one node at full speed: {node['tasks_per_s']:.1f} tasks/s = "
            f"{node['notices_per_s']:.0f} notices/s"
        )
    out.append(
        "database    side     notices/s  CPU ms/notice: process  loop  broker  db server"
        "  seconds  RSS MiB 10%/50%/end  peak"
    )
    rows = [("-", "consume", report["ceiling"])] if "ceiling" in report else []
    for db in report["databases"]:
        if "tracker" in db:
            rows += [(db["database"], side, db[side]) for side in ("bare", "tracker")]
    for database, side, s in rows:
        points = "/".join(f"{v:.0f}" for v in _rss_points(s["rss_mib"])) if s["rss_mib"] else "-"
        server = s.get("db_cpu_ms_per_notice")
        out.append(
            f"{database:<11} {side:<8} {s['per_s']:>9.0f} "
            f"{s['cpu_ms_per_notice']:>22.3f} {s['loop_cpu_ms_per_notice']:>5.3f} "
            f"{s['broker_cpu_ms_per_notice']:>7.3f} "
            f"{'-' if server is None else f'{server:.3f}':>10} "
            f"{s['seconds']:>8.1f}  {points:>19}  {s['peak_rss_mib'] or 0:>4.0f}"
        )
    for db in report["databases"]:
        if "reads" in db:
            r = db["reads"]
            out.append(
                f"{db['database']:<11} reads at {r['stored']}: fill {r['fill_seconds']} s; "
                + "; ".join(
                    f"{k} p50 {r['p50_ms'][k]} / p95 {v} ms, CPU {r['cpu_ms_per_request'][k]} ms"
                    for k, v in r["p95_ms"].items()
                )
            )
    return "\n".join([*out, *report["verdicts"]])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="small sizes: a quick check")
    parser.add_argument("--notices", type=int, help="notices per ingest phase (default 50000)")
    parser.add_argument("--tasks", type=int, help="tasks for the reads, 7 notices each (100000)")
    parser.add_argument("--node-tasks", type=int, help="tasks of the node reference (600; 0: none)")
    parser.add_argument("--probes", type=int, default=200, help="requests per read kind")
    parser.add_argument("--broker-url", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument("--only", choices=["sqlite", "postgresql"])
    parser.add_argument(
        "--writer",
        choices=["auto", "process", "loop"],
        default="auto",
        help="the tracker's ULOS_TRACKER_WRITER (default: auto, as the tracker's own)",
    )
    parser.add_argument(
        "--phase",
        choices=["all", "ingest", "reads"],
        default="all",
        help="run only the ingest (and node reference) or only the reads",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON report here")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="profile the tracker's ingest")
    args = parser.parse_args(argv)
    short = {"notices": 10000, "tasks": 10000, "node_tasks": 200}
    full = {"notices": 50000, "tasks": 100000, "node_tasks": 600}
    if args.phase == "reads":
        full["node_tasks"] = short["node_tasks"] = 0
    for key, value in (short if args.short else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main() -> int:
    args = parse_args()
    report = asyncio.run(run(args))
    print(render(report), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
