"""The main job: a local pipeline of ulos-py nodes processing every sample message.

Started by scripts/demo once RabbitMQ and the Docker engine run, the venv exists and the
executor images are built. It starts an FTP server (pyftpdlib) and one node per
configuration in testing-configurations/, zips and uploads each message's submission,
publishes every message in testing-messages/, shows each notice as it arrives, and ends
with a table of each task's actual path against the expected one. The table is built
from the tracker's API (`ulos-py tracker`, started beside the nodes) and checked against the
notices this script followed itself. It runs in a RabbitMQ virtual host of its own
(MESSAGE_BROKER_VHOST), deleted at the end with everything in it. Every process it started
is stopped on the way out, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika

from ulos_py.cli.status import TrackerUnreachable, fetch_journey

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = ROOT / "testing-messages"
CONFIGS = ROOT / "testing-configurations"
RUN = ROOT / ".run"
ULOS = [sys.executable, "-m", "ulos_py"]
VHOST = f"ulos-demo-{os.getpid()}"
"""The demo's own virtual host on the broker, removed at the end: it leaves no queue or
message behind, and runs beside a real deployment on the same broker."""
# The sample configurations' ports; the environment wins over them, as for the nodes, so
# the demo can run against a private broker and FTP port.
BROKER_PORT = int(os.environ.get("MESSAGE_BROKER_PORT") or 5672)
BROKER_URL = f"amqp://guest:guest@127.0.0.1:{BROKER_PORT}/{VHOST}"
FTP_PORT = int(os.environ.get("REMOTE_STORAGE_PORT") or 2121)
TRACKER_PORT = 8400
TRACKER_URL = f"http://127.0.0.1:{TRACKER_PORT}"
ROLES = [
    "general",
    "testing-1",
    "testing-2",
    "testing-3",
    "testing-4",
    "testing-5",
    "python-check",
    "pytest-grader",
    "gcode-check",
    "syntax-check",
    "web-e2e",
]
DEFAULT_SUBMISSION = "testing-messages/submissions/hello-world"
WAIT_SECONDS = 150  # from the last publish; a browser test run takes 10-30 s


@dataclass
class Journey:
    expected_stages: list[str]
    expected_end: str
    submission: str
    stages: list[str] = field(default_factory=list)
    end: str | None = None

    @property
    def ok(self) -> bool:
        return self.stages == self.expected_stages and self.end == self.expected_end


def run(*args: str, quiet: bool = False) -> None:
    env_file = ["--env-file", str(CONFIGS / "general.env")]
    result = subprocess.run([*ULOS, *args, *env_file], cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"ulos-py {' '.join(args)} failed:\n{result.stderr.strip()}")
    if not quiet:
        print(f"  {result.stdout.strip()}")


def wait_for_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    # The tracker imports its web stack and migrates its database first: on a busy
    # machine that alone has taken more than 15 s.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited at start (is port {port} already in use?)")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{what} did not answer on port {port}")


def start_processes(children: list[subprocess.Popen[bytes]]) -> None:
    ftp_root = RUN / "ftp"
    shutil.rmtree(ftp_root, ignore_errors=True)
    ftp_root.mkdir(parents=True)
    logs = RUN / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    print(f"==> FTP server (pyftpdlib) on 127.0.0.1:{FTP_PORT}, files in {ftp_root}")
    ftp = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyftpdlib",
            "-i",
            "127.0.0.1",
            "-p",
            str(FTP_PORT),
            "-w",
            "-d",
            str(ftp_root),
            "-u",
            "demo",
            "-P",
            "demo",
        ],
        stdout=subprocess.DEVNULL,
        stderr=(logs / "ftp.log").open("w"),
    )
    children.append(ftp)
    wait_for_port(FTP_PORT, ftp, "the FTP server")
    print("==> broker topology")
    run("topology", "apply", str(CONFIGS / "topology.toml"))
    print(f"==> nodes (logs in {logs})")
    for role in ROLES:
        log = (logs / f"{role}.log").open("w")
        env = {**os.environ, "ULOS_LOG_FORMAT": "json", "ULOS_WORK_DIR": str(RUN / "work")}
        node = subprocess.Popen(
            [*ULOS, "node", "--env-file", str(CONFIGS / f"{role}.env")],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            env=env,
        )
        children.append(node)
        print(f"  {role}: pid {node.pid}")
    start_tracker(children, logs)


def start_tracker(children: list[subprocess.Popen[bytes]], logs: Path) -> None:
    """`ulos-py tracker` on a fresh SQLite file, consuming the topology's `tracker` queue."""
    database = RUN / "tracker.sqlite3"
    for old in RUN.glob("tracker.sqlite3*"):
        old.unlink()
    env = {
        **os.environ,
        "ULOS_LOG_FORMAT": "json",
        "ULOS_TRACKER_QUEUE": "tracker",
        "ULOS_TRACKER_PORT": str(TRACKER_PORT),
        "ULOS_TRACKER_DATABASE": f"sqlite:///{database}",
    }
    log = (logs / "tracker.log").open("w")
    tracker = subprocess.Popen(
        [*ULOS, "tracker", "--env-file", str(CONFIGS / "general.env")],
        cwd=ROOT,
        stdout=log,
        stderr=log,
        env=env,
    )
    children.append(tracker)
    wait_for_port(TRACKER_PORT, tracker, "the tracker")
    print(
        f"==> tracker at {TRACKER_URL} (dashboard: open {TRACKER_URL}/ in a browser; "
        f"API description at {TRACKER_URL}/docs)"
    )


def stop_processes(children: list[subprocess.Popen[bytes]]) -> None:
    for child in reversed(children):
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in reversed(children):
        try:
            child.wait(timeout=40)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


async def purge_stage_queues(channel: aio_pika.abc.AbstractChannel) -> None:
    """Leftovers of an interrupted run would muddle this one's table."""
    for name in [*ROLES, "tracker"]:
        queue = await channel.get_queue(name, ensure=True)
        await queue.purge()


async def watch(
    journeys: dict[str, Journey], ready: asyncio.Event, published: asyncio.Event
) -> None:
    """Follow the notices until every journey ended, or for WAIT_SECONDS after the last
    task was published (uploading the submissions may take a while on a busy machine)."""
    connection = await aio_pika.connect_robust(BROKER_URL)
    async with connection:
        channel = await connection.channel()
        await purge_stage_queues(channel)
        notices = await channel.declare_queue(exclusive=True)
        await notices.bind("logs-exchange", "logs")
        await notices.bind("crash-exchange", "crash")
        ready.set()
        # The notices wait in the queue meanwhile; the deadline counts from the last
        # publish, so slow uploads on a busy machine do not eat it.
        await published.wait()
        deadline = time.monotonic() + WAIT_SECONDS
        async with notices.iterator() as incoming:
            while any(j.end is None for j in journeys.values()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                try:
                    message = await asyncio.wait_for(incoming.__anext__(), remaining)
                except TimeoutError:
                    if deadline is None:
                        continue
                    return
                await message.ack()
                if message.exchange == "logs-exchange" and b'"crashed"' in message.body:
                    continue  # the crash notice itself says it all
                follow(json.loads(message.body), journeys)


def follow(notice: dict[str, Any], journeys: dict[str, Journey]) -> None:
    task_id = str(notice.get("taskId", "?"))
    name = task_id.removeprefix("demo-")
    journey = journeys.get(name)
    stage = (notice.get("stage") or {}).get("routingKey", "-")
    event = notice.get("event")
    if event in ("received", "acked", "rejected", "downloaded", "uploaded"):
        return  # shown in the node logs; keep the live view to what moves a task
    print(f"  {task_id:<28} {stage:<16} {event:<18} {notice.get('logMessage', '')}")
    if journey is None:
        return
    if event == "execution_finished":
        journey.stages.append(f"{stage}:{notice['outcome']}")
    elif event == "forwarded" and notice["target"]["routingKey"].startswith("lab."):
        journey.end = notice["target"]["routingKey"]
    elif event == "completed":
        journey.end = "completed"
    elif event == "crashed" and "error" in notice:
        journey.end = f"crash:{notice['error']['kind']}"


def publish_all(names: list[str]) -> None:
    valid = [str(MESSAGES / f"{name}.json") for name in names if name != "bad-format"]
    print("==> publishing")
    run("publish", *valid)
    if "bad-format" in names:
        run(
            "publish",
            "--no-validate",
            "--exchange",
            "processing-exchange",
            "--routing-key",
            "skip",
            str(MESSAGES / "bad-format.json"),
        )


def upload_submissions(journeys: dict[str, Journey]) -> None:
    print("==> zipping and uploading each message's submission")
    uploaded = 0
    for name, journey in journeys.items():
        body = json.loads((MESSAGES / f"{name}.json").read_text())
        path = body.get("filePath")
        if name in ("missing-file", "bad-format") or not isinstance(path, str):
            continue
        run("storage", "upload", str(ROOT / journey.submission), path, quiet=True)
        uploaded += 1
    print(f"  {uploaded} submissions uploaded")


def tracked_path(name: str) -> tuple[list[str], str | None]:
    """The stages and end of a task as the tracker tells them (SPEC §10's journey)."""
    try:
        task = fetch_journey(TRACKER_URL, f"demo-{name}")
    except TrackerUnreachable:
        return [], None
    if task is None:
        return [], None
    visits = task["visits"]
    stages = [f"{v['stage']['routingKey']}:{v['outcome']}" for v in visits if v["outcome"]]
    last = visits[-1] if visits else {}
    end: str | None = None
    if last.get("crash"):
        end = f"crash:{last['crash']['kind']}"
    elif last.get("forwardedTo") and last["forwardedTo"]["routingKey"].startswith("lab."):
        end = last["forwardedTo"]["routingKey"]
    elif task["state"] in ("passed", "failed"):
        end = "completed"
    return stages, end


def from_tracker(journeys: dict[str, Journey]) -> tuple[dict[str, Journey], list[str]]:
    """The tracker's view of every task, and where it disagrees with the notices followed
    here. It stores in batches, so it may be a moment behind: asked again for up to 20 s."""
    deadline = time.monotonic() + 20
    while True:
        tracked = {}
        for name, seen in journeys.items():
            stages, end = tracked_path(name)
            tracked[name] = Journey(
                seen.expected_stages, seen.expected_end, seen.submission, stages, end
            )
        disagreements = [
            f"  {name}: tracker {t.stages} > {t.end}; notices {s.stages} > {s.end}"
            for name, t in tracked.items()
            if (t.stages, t.end) != ((s := journeys[name]).stages, s.end)
        ]
        if not disagreements or time.monotonic() > deadline:
            return tracked, disagreements
        time.sleep(0.5)


def report(journeys: dict[str, Journey]) -> bool:
    print()
    print(f"(from the tracker's API, {TRACKER_URL}/api/tasks/demo-NAME)")
    print(f"{'message':<24} {'as expected':<12} path taken (stage:outcome > end)")
    for name, j in journeys.items():
        actual = " > ".join([*j.stages, j.end or "(no end seen)"])
        print(f"{name:<24} {'yes' if j.ok else 'NO':<12} {actual}")
        if not j.ok:
            expected = " > ".join([*j.expected_stages, j.expected_end])
            print(f"{'':<24} {'expected':<12} {expected}")
    bad = [name for name, j in journeys.items() if not j.ok]
    print()
    print(f"{len(journeys) - len(bad)} of {len(journeys)} tasks took their expected path")
    return not bad


def catch_interrupts() -> asyncio.Event:
    """An event set by Ctrl-C or SIGTERM, installed before anything starts.

    asyncio.run turns Ctrl-C into a cancellation, which the broker client may swallow; an
    explicit handler makes Ctrl-C always stop the run (and every process it started).
    """
    interrupted = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, interrupted.set)
    return interrupted


async def finished_unless_interrupted(
    watcher: asyncio.Task[None], interrupted: asyncio.Event
) -> bool:
    """Wait for the watcher; False if interrupted first."""
    if interrupted.is_set():
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        return False
    waiting = asyncio.ensure_future(interrupted.wait())
    await asyncio.wait({watcher, waiting}, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if watcher.done():
        watcher.result()
        return True
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    return False


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


def make_vhost() -> None:
    """A virtual host of the demo's own; every node and command of it uses it."""
    print(f"==> virtual host {VHOST} (removed at the end)")
    rabbitmqctl("add_vhost", VHOST)
    rabbitmqctl("set_permissions", "-p", VHOST, "guest", ".*", ".*", ".*")
    os.environ["MESSAGE_BROKER_VHOST"] = VHOST


def remove_vhost() -> None:
    """Its queues, exchanges and messages go with it."""
    print(f"==> removing virtual host {VHOST}")
    rabbitmqctl("delete_vhost", VHOST)


async def main() -> int:
    expected = tomllib.loads((MESSAGES / "expected.toml").read_text())
    journeys = {
        name: Journey(list(spec["stages"]), spec["end"], spec.get("submission", DEFAULT_SUBMISSION))
        for name, spec in expected.items()
    }
    children: list[subprocess.Popen[bytes]] = []
    interrupted = catch_interrupts()
    make_vhost()
    try:
        start_processes(children)
        ready = asyncio.Event()
        published = asyncio.Event()
        watcher = asyncio.create_task(watch(journeys, ready, published))
        await ready.wait()
        # In a thread: these wait on a CLI process per file (30 of them), and the watcher's
        # broker connection must keep answering heartbeats meanwhile.
        await asyncio.to_thread(upload_submissions, journeys)
        await asyncio.to_thread(publish_all, list(journeys))
        published.set()
        print("==> following the notices (task, stage, event, message)")
        if not await finished_unless_interrupted(watcher, interrupted):
            print("==> interrupted")
            return 130
        tracked, disagreements = from_tracker(journeys)
        if disagreements:
            print("==> the tracker and the notices followed here disagree on:")
            print("\n".join(disagreements))
        else:
            print("==> the tracker's journeys agree with the notices followed here")
        return 0 if report(tracked) and not disagreements else 1
    finally:
        print("==> stopping every process this run started")
        stop_processes(children)
        remove_vhost()


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(130)
