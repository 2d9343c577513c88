#!/usr/bin/env python
"""Throughput of a real `ulos-py node` running a docker executor, against bare docker-py.

Both run the shipped `python-check` image on a small Python submission that passes, at the
same concurrency. The node does the whole task (broker, FTP, zips, container, notices,
forward); the baseline only the container's lifecycle through docker-py, as directly as
possible. Their ratio is what a docker stage costs on top of the container it cannot avoid.
See README.md here.

    python benchmarks/docker_throughput.py [--tasks 60] [--rounds 2] [--out report.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, suppress
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

import docker
import docker.errors
from aio_pika.abc import AbstractIncomingMessage
from bench_fixtures import (
    Topology,
    publish_tasks,
    queue_depth,
    say,
    settled_depth,
    zip_folder,
)
from docker.types import LogConfig
from node_throughput import (
    Bench,
    DoneWatcher,
    NodeProcess,
    Pids,
    node_env,
    open_bench,
    prepare_phase,
    quietly,
    run_and_report,
    run_tmp_dir,
    start_profiler,
    stop_profiler,
    wait_for_done,
)
from proc_probes import CpuSnapshot, cpu_seconds

from ulos_py.execution.docker_spec import DockerExecutorSpec, load_docker_spec, parse_size
from ulos_py.execution.transfer import pack_for_container

REPO = Path(__file__).resolve().parents[1]
EXECUTOR = "python-check"
FOLDER = REPO / "executors" / EXECUTOR
EXAMPLE = FOLDER / "examples" / "pass-complete"
STAGE = EXECUTOR
LABEL = "ulos-py"  # what the node's engine adapter puts on every container it creates
NODE_LABEL = "ulos-py.node"
# received, downloaded, execution_started, execution_finished, uploaded, forwarded, acked
NOTICES_PER_TASK = 7
TARGET_RATIO = 0.85
ENGINE_PROCESSES = ("dockerd", "containerd")
WARM_UP_CONTAINERS = 2
CPU_PARTS = ("host", "worker", "ftp", "broker", "engine")
STEPS = {  # a node step: (notice that starts it, notice that ends it)
    "download": ("received", "downloaded"),  # download and unpack the zip
    "container": ("execution_started", "execution_finished"),  # the whole DockerExecutor.run
    "upload": ("execution_finished", "uploaded"),  # output file, pack, upload
    "forward": ("uploaded", "forwarded"),
    "ack": ("forwarded", "acked"),
    "total": ("received", "acked"),
}


# CPU readings at the first and the last completion: the steady-state window


def engine_pids() -> list[int]:
    """dockerd and containerd; per-container shims and runc come and go (host CPU only)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if (entry / "comm").read_text().strip() in ENGINE_PROCESSES:
                    pids.append(int(entry.name))
    return pids


@dataclass(frozen=True)
class Reading:
    """CPU seconds so far of the host, the worker, FTP, broker and engine."""

    cpu: CpuSnapshot
    engine: float

    @classmethod
    def take(cls, pids: Pids, engine: list[int]) -> Reading:
        return cls(CpuSnapshot.take(*pids), sum(map(cpu_seconds, engine)))

    def seconds(self) -> dict[str, float]:
        c = self.cpu
        return dict(
            zip(CPU_PARTS, (c.host_busy, c.worker, c.ftp, c.broker, self.engine), strict=True)
        )


class NodeWatcher(DoneWatcher):
    """The node_throughput watcher of `done`, plus the engine's CPU at first and last arrival."""

    def __init__(
        self, task_ids: set[str], hop: dict[str, str], pids: Callable[[], Pids], engine: list[int]
    ) -> None:
        super().__init__(task_ids, hop, pids)
        self._engine_pids = engine
        self.engine_at: dict[int, float] = {}

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        before = len(self.seen)
        await super().on_message(message)
        if len(self.seen) > before and len(self.seen) in (1, self.total):
            self.engine_at[len(self.seen)] = sum(map(cpu_seconds, self._engine_pids))

    def readings(self) -> tuple[Reading, Reading] | None:
        first, last = self.cpu_first, self.cpu_last
        if first is None or last is None or len(self.engine_at) < 2:
            return None
        return Reading(first, self.engine_at[1]), Reading(last, self.engine_at[self.total])


class BareWindow:
    """Completion times of the baseline's threads, with readings at the first and last."""

    def __init__(self, total: int, pids: Pids, engine: list[int]) -> None:
        self.total = total
        self._pids = pids
        self._engine = engine
        self._lock = threading.Lock()
        self.arrivals: list[float] = []
        self.lifecycles: list[float] = []
        self.first: Reading | None = None
        self.last: Reading | None = None

    def arrived(self, lifecycle: float) -> None:
        with self._lock:
            self.arrivals.append(time.perf_counter())
            self.lifecycles.append(lifecycle)
            if len(self.arrivals) == 1:
                self.first = Reading.take(self._pids, self._engine)
            if len(self.arrivals) == self.total:
                self.last = Reading.take(self._pids, self._engine)


@dataclass
class Phase:
    label: str
    kind: str
    concurrency: int
    round: int
    tasks: int
    done: int = 0
    tasks_per_s: float = 0.0
    ratio_to_bare: float | None = None
    first_to_last_s: float = 0.0
    start_to_first_s: float = 0.0
    cpu_ms_per_task: dict[str, float] = field(default_factory=dict)
    host_cpu_busy_percent: float = 0.0
    steps_ms: dict[str, float] = field(default_factory=dict)
    """Median wall ms per task: the node's steps (from its notices; `to_start`: from
    `received` to the container's start, from the engine's events), the bare lifecycle."""
    received_at: list[float] = field(default_factory=list)
    """The node's `received` notices, seconds since the epoch, in order."""
    checks: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def fill_timing(
        self, arrivals: list[float], window: tuple[Reading, Reading] | None, started: float
    ) -> None:
        """Rate over first→last completion (start-up excluded), CPU over the same window."""
        self.done = len(arrivals)
        if self.done < 2 or arrivals[-1] <= arrivals[0]:
            return
        self.first_to_last_s = round(arrivals[-1] - arrivals[0], 3)
        self.start_to_first_s = round(arrivals[0] - started, 3)
        self.tasks_per_s = round((self.done - 1) / self.first_to_last_s, 3)
        if window is None:
            return
        first, last = window[0].seconds(), window[1].seconds()
        self.cpu_ms_per_task = {
            part: round((last[part] - first[part]) * 1000 / (self.done - 1), 1)
            for part in CPU_PARTS
        }
        elapsed = window[1].cpu.host_total - window[0].cpu.host_total
        if elapsed > 0:
            self.host_cpu_busy_percent = round(100 * (last["host"] - first["host"]) / elapsed, 1)


@dataclass
class Run:
    """What every phase shares: the fixtures, the executor's settings, the engine."""

    bench: Bench
    spec: DockerExecutorSpec
    registry: Path
    files_tar: bytes
    engine_pids: list[int]
    api: docker.APIClient

    @property
    def prefix(self) -> str:
        return self.bench.topology.prefix


# The baseline: the container lifecycle with docker-py, nothing else


def host_config(api: docker.APIClient, spec: DockerExecutorSpec) -> dict[str, Any]:
    """The node's sandbox (DockerExecutor._container_spec + the engine's _create), by hand."""
    limits = spec.settings.limits
    memory = parse_size(limits.memory)
    return dict(
        api.create_host_config(
            network_mode="bridge" if limits.network else "none",
            mem_limit=memory,
            memswap_limit=memory,
            nano_cpus=int(limits.cpus * 1e9),
            pids_limit=limits.pids,
            cap_drop=["ALL"] if limits.drop_capabilities else None,
            security_opt=["no-new-privileges"] if limits.no_new_privileges else None,
            log_config=LogConfig(
                type="json-file",
                config={"max-size": str(parse_size(limits.output_limit)), "max-file": "1"},
            ),
        )
    )


def bare_task(api: docker.APIClient, run: Run, labels: dict[str, str]) -> tuple[int, bool]:
    """One container's whole life: (exit status, whether its output says PASS)."""
    settings = run.spec.settings
    created = api.create_container(
        settings.image,
        command=settings.command,
        user=settings.limits.user,
        environment={"HOME": "/tmp", **settings.environment},
        working_dir=settings.mount,
        network_disabled=not settings.limits.network,
        labels=labels,
        host_config=host_config(api, run.spec),
    )
    container = created["Id"]
    try:
        if not api.put_archive(container, str(Path(settings.mount).parent), run.files_tar):
            raise RuntimeError("the engine refused the task files")
        api.start(container)
        status = int(api.wait(container, timeout=None)["StatusCode"])
        output = bytes(api.logs(container, stdout=True, stderr=True))
        chunks, _ = api.get_archive(container, settings.mount, chunk_size=1 << 16)
        for _ in chunks:  # read it all, as the node does, and keep nothing
            pass
    finally:
        api.remove_container(container, force=True)
    return status, b"python-check: PASS" in output


def bare_phase(
    run: Run, tasks: int, concurrency: int, window: BareWindow | None, stop: threading.Event
) -> list[str]:
    """`tasks` lifecycles on `concurrency` threads sharing one client; the problems found."""
    labels = {
        LABEL: "bench-bare",
        NODE_LABEL: f"{run.prefix}-bare",
        "ulos-py.executor": EXECUTOR,
        "ulos-py.stage": STAGE,
    }
    api = docker.APIClient(
        version="auto", max_pool_size=concurrency, **docker.utils.kwargs_from_env()
    )

    def one(_: int) -> tuple[int, bool] | None:
        if stop.is_set():
            return None
        began = time.perf_counter()
        outcome = bare_task(api, run, labels)
        if window is not None:
            window.arrived(time.perf_counter() - began)
        return outcome

    try:
        with ThreadPoolExecutor(concurrency, thread_name_prefix="bare") as pool:
            outcomes = list(pool.map(one, range(tasks)))
    finally:
        api.close()
    failed = sum(1 for o in outcomes if o is not None and o != (0, True))
    return [f"{failed} containers did not exit 0 with a PASS"] if failed else []


async def run_bare(run: Run, concurrency: int, round_no: int) -> Phase:
    args = run.bench.args
    phase = Phase(f"bare-c{concurrency}-r{round_no}", "bare", concurrency, round_no, args.tasks)
    window = BareWindow(
        args.tasks,
        (os.getpid(), run.bench.ftp.pid, run.bench.broker_pids),
        run.engine_pids,
    )
    stop = threading.Event()
    started = time.perf_counter()
    try:
        phase.problems += await asyncio.to_thread(
            bare_phase, run, args.tasks, concurrency, window, stop
        )
    except asyncio.CancelledError:
        stop.set()  # the threads finish the containers they run, and start no more
        raise
    except (docker.errors.DockerException, RuntimeError) as exc:
        phase.problems.append(f"docker-py: {exc}")
    phase.fill_timing(window.arrivals, _pair(window.first, window.last), started)
    if window.lifecycles:
        phase.steps_ms = {"lifecycle": round(1000 * statistics.median(window.lifecycles), 1)}
    phase.checks = {"passed": phase.done if not phase.problems else None}
    await check_containers(run, phase)
    return done_say(phase)


def _pair(first: Reading | None, last: Reading | None) -> tuple[Reading, Reading] | None:
    return None if first is None or last is None else (first, last)


# The node: a real `ulos-py node` process serving the stage with the docker executor


def write_registry(tmp: Path) -> Path:
    """A registry routing the benchmark's stage to python-check, found by absolute path."""
    path = tmp / "registry.toml"
    path.write_text(
        f'[[route]]\nstage = "{STAGE}"\nexecutor = "{EXECUTOR}"\n\n'
        f'[executor.{EXECUTOR}]\nkind = "docker"\nfolder = "{FOLDER}"\n'
    )
    return path


async def run_node(run: Run, concurrency: int, round_no: int) -> Phase:
    bench = run.bench
    phase = Phase(
        f"node-c{concurrency}-r{round_no}", "node", concurrency, round_no, bench.args.tasks
    )
    task_ids, bodies = await prepare_phase(bench, phase.label)
    await publish_tasks(bench.channel, bench.topology, bodies)
    env = node_env(bench, concurrency)
    env.update(
        MESSAGE_BROKER_PREFETCH_COUNT=str(concurrency),
        ULOS_EXECUTORS_FILE=str(run.registry),
        ULOS_NODE_ID=f"{run.prefix}-node",
    )
    worker: NodeProcess | None = None
    watcher = NodeWatcher(
        task_ids,
        bench.topology.done_hop(),
        lambda: (worker.pid if worker else 0, bench.ftp.pid, bench.broker_pids),
        run.engine_pids,
    )
    done_queue = await bench.channel.get_queue(bench.topology.queue("done"), ensure=False)
    tag = await done_queue.consume(watcher.on_message, no_ack=True)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(quietly, done_queue.cancel(tag))
        started = time.perf_counter()
        starts = ContainerStarts(run)
        stack.callback(starts.stop)
        worker = await NodeProcess.start(env, bench.tmp / f"{phase.label}.log")
        stack.push_async_callback(worker.stop)
        profiler = await start_profiler(bench, phase.label, worker.pid)
        try:
            await wait_for_done(bench, watcher, worker, phase.label)
        except RuntimeError as exc:
            phase.problems.append(str(exc))
        phase.fill_timing(watcher.arrivals, watcher.readings(), started)
        exit_code = await worker.stop()
        await stop_profiler(profiler)
    if exit_code != 0:
        phase.problems.append(f"the node exited {exit_code} after SIGTERM")
    phase.problems += node_log_problems(worker.log_path)
    await check_node_outcomes(run, phase, watcher, bodies)
    if (to_start := received_to_start_ms(phase.received_at, starts.seen)) is not None:
        phase.steps_ms["to_start"] = to_start
    await check_containers(run, phase)
    await asyncio.to_thread(shutil.rmtree, bench.ftp.root / "bench" / phase.label, True)
    return done_say(phase)


def node_log_problems(path: Path) -> list[str]:
    lines = path.read_text(errors="replace").splitlines()
    noisy = [line for line in lines if '"level": "warning"' in line or '"level": "error"' in line]
    for line in noisy[-10:]:
        say(f"  node log: {line[:400]}")
    return [f"{len(noisy)} warning/error lines in the node's log"] if noisy else []


async def check_node_outcomes(
    run: Run, phase: Phase, watcher: NodeWatcher, bodies: list[bytes]
) -> None:
    """Every task forwarded once, a PASS notice for each, a PASS in each uploaded zip."""
    if run.bench.broker_lost is not None:
        return
    notices, passed, stamps = await drain_notices(run, set(watcher.seen))
    phase.steps_ms = step_medians(stamps)
    phase.received_at = sorted(
        events["received"].timestamp() for events in stamps.values() if "received" in events
    )
    paths = [json.loads(body)["filePath"] for body in bodies]
    bad_zips = await asyncio.to_thread(zips_without_pass, run.bench.ftp.root, paths)
    phase.checks = {
        "forwarded": len(watcher.seen),
        "duplicates": watcher.duplicates,
        "unexpected": watcher.unexpected,
        "log_notices": notices,
        "pass_notices": passed,
        "crash_notices": await queue_depth(run.bench.channel, run.bench.topology.queue("crashes")),
        "left_in_input": await queue_depth(run.bench.channel, run.bench.topology.queue("input")),
        "zips_without_pass": len(bad_zips),
    }
    expected = {
        "forwarded": phase.tasks,
        "duplicates": 0,
        "unexpected": 0,
        "log_notices": phase.tasks * NOTICES_PER_TASK,
        "pass_notices": phase.tasks,
        "crash_notices": 0,
        "left_in_input": 0,
        "zips_without_pass": 0,
    }
    phase.problems += [
        f"{name} {phase.checks[name]} (expected {value})"
        for name, value in expected.items()
        if phase.checks[name] != value
    ]


async def drain_notices(
    run: Run, task_ids: set[str]
) -> tuple[int, int, dict[str, dict[str, datetime]]]:
    """(log notices, tasks with an `execution_finished` notice saying pass, each task's
    notices' timestamps by event)."""
    channel, name = run.bench.channel, run.bench.topology.queue("logs")
    await settled_depth(channel, name, len(task_ids) * NOTICES_PER_TASK)
    queue = await channel.get_queue(name, ensure=False)
    notices, passed = 0, set()
    stamps: dict[str, dict[str, datetime]] = {}
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        notices += 1
        body = json.loads(message.body)
        task, event = body.get("taskId"), body.get("event")
        if event == "execution_finished" and body.get("outcome") == "pass":
            passed.add(task)
        with suppress(TypeError, ValueError):
            stamps.setdefault(task, {})[event] = datetime.fromisoformat(body["timestamp"])
    return notices, len(passed & task_ids), stamps


class ContainerStarts:
    """The engine's start events of this run's node's containers, as they happen (seconds
    since the epoch). Followed live: the engine keeps only its last few hundred events, too
    few to ask for a 60-task phase afterwards."""

    def __init__(self, run: Run) -> None:
        self.seen: list[float] = []
        self._stream = run.api.events(
            since=int(time.time()),
            filters={
                "type": "container",
                "event": "start",
                "label": f"ulos-py.node={run.prefix}-node",
            },
            decode=True,
        )
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        with suppress(Exception):  # the stream ends with an error when closed
            for event in self._stream:
                self.seen.append(event["timeNano"] / 1e9)

    def stop(self) -> None:
        self._stream.close()
        self._thread.join(5)
        self.seen.sort()


def received_to_start_ms(received: list[float], starts: list[float]) -> float | None:
    """Median ms from a task's `received` notice to its container's start. The engine's
    events do not name the task, so the k-th task received is paired with the k-th
    container started: exact at concurrency 1, the order of arrival at higher ones."""
    spans = [(start - got) * 1000 for got, start in zip(received, starts, strict=False)]
    return round(statistics.median(spans), 1) if spans else None


def step_medians(stamps: dict[str, dict[str, datetime]]) -> dict[str, float]:
    """Median ms of each node step over the tasks whose notices show both of its ends."""
    medians = {}
    for step, (begin, end) in STEPS.items():
        spans = [
            (events[end] - events[begin]).total_seconds() * 1000
            for events in stamps.values()
            if begin in events and end in events
        ]
        if spans:
            medians[step] = round(statistics.median(spans), 1)
    return medians


def zips_without_pass(root: Path, paths: list[str]) -> list[str]:
    """Uploaded zips lacking the container's PASS: `results/check.json` and the output file."""
    bad = []
    for path in paths:
        try:
            with zipfile.ZipFile(root / path.lstrip("/")) as zf:
                report = json.loads(zf.read("results/check.json"))
                outputs = [n for n in zf.namelist() if n.startswith("output_")]
                output = zf.read(outputs[0]).decode() if len(outputs) == 1 else ""
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            bad.append(path)
            continue
        if report.get("passed") is not True or "pass by rule exit-code" not in output:
            bad.append(path)
    return bad


# Containers left behind, the image, and the phase sequence


def labelled_containers(api: docker.APIClient) -> list[dict[str, Any]]:
    return list(api.containers(all=True, filters={"label": LABEL}))


def of_run(containers: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """Those made by this run's node or baseline (their node label starts with its prefix)."""
    return [c for c in containers if (c.get("Labels") or {}).get(NODE_LABEL, "").startswith(prefix)]


async def check_containers(run: Run, phase: Phase) -> None:
    """None of this run's containers may outlive its phase; others' are only reported."""
    found = await asyncio.to_thread(labelled_containers, run.api)
    ours = of_run(found, run.prefix)
    phase.checks["containers_left"] = len(ours)
    if ours:
        phase.problems.append(f"{len(ours)} containers of this run left: {ours[0]['Id'][:12]}…")
    if len(found) > len(ours):
        say(f"  note: {len(found) - len(ours)} `{LABEL}` containers of other runs exist")


def done_say(phase: Phase) -> Phase:
    state = "ok" if not phase.problems else "PROBLEMS: " + "; ".join(phase.problems)
    say(f"{phase.label}: {phase.done}/{phase.tasks} done, {phase.tasks_per_s:.2f} tasks/s, {state}")
    return phase


def ensure_image(api: docker.APIClient, registry: Path, image: str) -> str:
    """The image's id, building it first (with the project's own command) if it is missing."""
    try:
        return str(api.inspect_image(image)["Id"])
    except docker.errors.ImageNotFound:
        say(f"image {image} missing: building it")
    cli = Path(sys.executable).parent / "ulos-py"
    command = [str(cli)] if cli.is_file() else [sys.executable, "-m", "ulos_py"]
    subprocess.run(
        [*command, "executors", "build", "--registry", str(registry), EXECUTOR],
        cwd=REPO,
        check=True,
    )
    return str(api.inspect_image(image)["Id"])


async def warm_up(run: Run) -> None:
    """A few unmeasured containers, so the first phase does not pay for cold caches."""
    problems = await asyncio.to_thread(
        bare_phase, run, WARM_UP_CONTAINERS, 1, None, threading.Event()
    )
    if problems:
        raise RuntimeError(f"warm-up containers failed: {problems}")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    """Bare and node at each concurrency, in that order, `args.rounds` times."""
    wall = time.perf_counter()
    topology = Topology(f"bench-{uuid.uuid4().hex[:8]}", stage=STAGE)
    phases: list[Phase] = []
    async with AsyncExitStack() as stack:
        tmp = run_tmp_dir(stack, args)
        api = docker.APIClient(version="auto", **docker.utils.kwargs_from_env())
        stack.callback(api.close)
        spec = load_docker_spec(EXECUTOR, FOLDER)
        registry = write_registry(tmp)
        image_id = await asyncio.to_thread(ensure_image, api, registry, spec.settings.image)
        zip_data = zip_folder(EXAMPLE)
        bench = await open_bench(stack, args, topology, tmp, zip_data, "async")
        with pack_for_container(
            EXAMPLE, PurePosixPath(spec.settings.mount), spec.settings.limits.uid_gid
        ) as packed:
            files = packed.read()  # the tar the node makes of the unpacked zip, made once
        run_ = Run(bench, spec, registry, files, engine_pids(), api)
        say(
            f"image {spec.settings.image} ({image_id[7:19]}), zip {len(zip_data)} bytes, "
            f"names {topology.prefix}.*, FTP 127.0.0.1:{bench.ftp.port}"
        )
        await warm_up(run_)
        for round_no in range(1, args.rounds + 1):
            for concurrency in args.concurrency:
                phases.append(await run_bare(run_, concurrency, round_no))
                phases.append(await run_node(run_, concurrency, round_no))
                if bench.broker_lost is not None:
                    break
        left = await asyncio.to_thread(labelled_containers, api)
        ours_left = [c["Id"][:12] for c in of_run(left, run_.prefix)]
    report = build_report(args, spec, image_id, len(zip_data), phases, ours_left)
    report["wall_s"] = round(time.perf_counter() - wall, 1)
    return report


# The report


def build_report(
    args: argparse.Namespace,
    spec: DockerExecutorSpec,
    image_id: str,
    zip_bytes: int,
    phases: list[Phase],
    containers_left: list[str],
) -> dict[str, Any]:
    bare = {(p.round, p.concurrency): p.tasks_per_s for p in phases if p.kind == "bare"}
    for p in phases:
        if p.kind == "node" and not p.problems and bare.get((p.round, p.concurrency)):
            p.ratio_to_bare = round(p.tasks_per_s / bare[(p.round, p.concurrency)], 3)
    return {
        "benchmark": "docker_throughput",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "executor": EXECUTOR,
        "image": spec.settings.image,
        "image_id": image_id,
        "sandbox": spec.settings.limits.model_dump(),
        "submission": str(EXAMPLE.relative_to(REPO)),
        "zip_bytes": zip_bytes,
        "tasks": args.tasks,
        "rounds": args.rounds,
        "concurrency": args.concurrency,
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "phases": [asdict(p) for p in phases],
        "summary": summarise(phases, args.concurrency),
        "target_ratio": TARGET_RATIO,
        "containers_left": containers_left,
        "ok": not containers_left and all(not p.problems for p in phases),
    }


def summarise(phases: list[Phase], concurrencies: list[int]) -> dict[str, Any]:
    """Per concurrency and side: median, min and max tasks/s, median CPU ms per task."""
    summary: dict[str, Any] = {}
    for c in concurrencies:
        entry: dict[str, Any] = {}
        for kind in ("bare", "node"):
            runs = [p for p in phases if p.concurrency == c and p.kind == kind and p.done > 1]
            if not runs:
                continue
            rates = [p.tasks_per_s for p in runs]
            entry[kind] = {
                "median_tasks_per_s": round(statistics.median(rates), 3),
                "min_tasks_per_s": min(rates),
                "max_tasks_per_s": max(rates),
                "cpu_ms_per_task": {
                    part: round(statistics.median(p.cpu_ms_per_task.get(part, 0) for p in runs), 1)
                    for part in CPU_PARTS
                },
            }
        if "bare" in entry and "node" in entry:
            ratio = entry["node"]["median_tasks_per_s"] / entry["bare"]["median_tasks_per_s"]
            entry["ratio"] = round(ratio, 3)
            entry["ratios_by_round"] = [
                p.ratio_to_bare for p in phases if p.kind == "node" and p.concurrency == c
            ]
        summary[f"c{c}"] = entry
    return summary


def render_table(report: dict[str, Any]) -> str:
    lines = [
        f"ulos-py docker executor throughput: {report['executor']} ({report['image']}), "
        f"{report['tasks']} tasks per phase, {report['zip_bytes']} B zip of "
        f"{report['submission']}, {report['host']['cpus']} CPUs, {report['rounds']} round(s)",
        "",
        f"{'phase':<12} {'tasks/s':>8} {'node/bare':>9} {'first→last':>10} {'start→1st':>9} "
        f"{'host CPU':>8} {'CPU ms/task':>20} {'host':>5}",
        f"{'':<12} {'':>8} {'':>9} {'s':>10} {'s':>9} {'ms/task':>8} "
        f"{'wrk/ftp/mq/engine':>20} {'busy%':>5}",
    ]
    for p in report["phases"]:
        cpu = p["cpu_ms_per_task"]
        parts = "/".join(f"{cpu[k]:.0f}" for k in CPU_PARTS[1:]) if cpu else "-"
        ratio = "-" if p["ratio_to_bare"] is None else f"{p['ratio_to_bare']:.2f}"
        lines.append(
            f"{p['label']:<12} {p['tasks_per_s']:>8.2f} {ratio:>9} {p['first_to_last_s']:>10.2f} "
            f"{p['start_to_first_s']:>9.2f} {cpu.get('host', 0):>8.0f} {parts:>20} "
            f"{p['host_cpu_busy_percent']:>5.0f}"
        )
    lines += ["", *step_lines(report), "", *summary_lines(report), ""]
    lines += [
        f"{p['label']}: {'; '.join(p['problems']) or 'all checks pass'}" for p in report["phases"]
    ]
    left = report["containers_left"]
    lines.append(f"containers of this run left: {len(left)}{' ' + ', '.join(left) if left else ''}")
    lines.append(f"wall time {report.get('wall_s', 0):.0f} s; {'OK' if report['ok'] else 'FAILED'}")
    return "\n".join(lines)


def step_lines(report: dict[str, Any]) -> list[str]:
    """Where a task's wall time goes: median ms per step, and ms between completions."""
    lines = ["median ms per task (node: from its notices; bare: create→remove; cycle = c / rate):"]
    for p in report["phases"]:
        steps = " ".join(f"{name} {ms:.0f}" for name, ms in p["steps_ms"].items())
        cycle = 1000 * p["concurrency"] / p["tasks_per_s"] if p["tasks_per_s"] else 0
        lines.append(f"  {p['label']:<12} {steps}; cycle {cycle:.0f}")
    return lines


def summary_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for config, entry in report["summary"].items():
        sides = [
            f"{kind} {s['median_tasks_per_s']:.2f} tasks/s "
            f"({s['min_tasks_per_s']:.2f}-{s['max_tasks_per_s']:.2f}), "
            f"host CPU {s['cpu_ms_per_task']['host']:.0f} ms/task"
            for kind in ("bare", "node")
            if (s := entry.get(kind))
        ]
        text = f"{config}: " + "; ".join(sides)
        if "ratio" in entry:
            verdict = "meets" if entry["ratio"] >= report["target_ratio"] else "BELOW"
            by_round = ", ".join("-" if r is None else f"{r:.2f}" for r in entry["ratios_by_round"])
            text += (
                f"; node/bare = {entry['ratio']:.2f} ({verdict} the target "
                f"≥ {report['target_ratio']:.2f}; rounds {by_round})"
            )
        lines.append(text)
    return lines


def concurrency_list(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive integers")
    return values


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Tasks/s of a ulos-py node running the python-check docker executor vs "
        "the bare container lifecycle with docker-py (see benchmarks/README.md).",
    )
    parser.add_argument("--tasks", type=int, default=60, help="tasks per phase (default 60)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of all phases (default 2)")
    parser.add_argument(
        "--concurrency",
        type=concurrency_list,
        default=[1, 4],
        help="tasks at once, node prefetch = baseline threads (default 1,4)",
    )
    parser.add_argument(
        "--broker-url", default="amqp://guest:guest@127.0.0.1:5672/", help="RabbitMQ URL"
    )
    parser.add_argument(
        "--tmp-dir", type=Path, help="parent of the run's temp dir (FTP root, node work dirs)"
    )
    parser.add_argument("--timeout", type=float, default=300, help="seconds allowed per phase")
    parser.add_argument("--json", action="store_true", help="JSON on stdout, table on stderr")
    parser.add_argument("--out", type=Path, help="also write the JSON report to this file")
    parser.add_argument("--py-spy", type=Path, metavar="DIR", help="record py-spy profiles here")
    parser.add_argument(
        "--py-spy-format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph"
    )
    args = parser.parse_args(argv)
    if args.tasks < 2 or args.rounds < 1:
        parser.error("--tasks must be at least 2, --rounds at least 1")
    args.prefetch = 0  # read by node_throughput.node_env; each node phase sets its own
    return args


def main(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv), run, render_table)


if __name__ == "__main__":
    sys.exit(main())
