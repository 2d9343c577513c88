"""Docker executors through an in-process node, against the real broker, FTP and engine.

The test probe executor (tests/integration/docker_probe) runs the submission's `run.py`,
so each test's submission makes the container do what the test needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import textwrap
import zipfile
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.docker_probe import (
    EngineProxy,
    probe_registry,
    zip_folder,
)
from tests.support.harness import (
    Pipeline,
    make_zip,
    node_settings,
    pipeline,
    running_node,
    stage,
    task,
)
from tests.support.services import PROBE_EXECUTOR, Broker, Engine, FtpServer, Names

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("executor_images")]


@pytest.fixture
async def line(names: Names, amqp) -> AsyncIterator[Pipeline]:  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


@dataclass
class Probe:
    """One test's node and pipeline around the probe executor."""

    line: Pipeline
    names: Names
    ftp: FtpServer
    engine: Engine
    node_id: str
    count: int = 0

    async def submit(
        self, run_py: str, timeout: float = 30, files: dict[str, str] | None = None
    ) -> str:
        """Upload a submission whose run.py is `run_py`; publish its task; return its path."""
        self.count += 1
        path = f"/{self.names.prefix}/submission-{self.count}.zip"
        self.ftp.put(path, make_zip({"run.py": textwrap.dedent(run_py), **(files or {})}))
        tree = stage(
            self.names.exchange,
            "probe",
            success=stage(self.names.exchange, "next-key"),
            failure=stage(self.names.exchange, "failed-key"),
        )
        await self.line.publish(task(f"task-{self.count}", path, tree, timeout=timeout))
        return path

    def uploaded(self, path: str) -> dict[str, bytes]:
        with zipfile.ZipFile(io.BytesIO(self.ftp.get(path))) as zf:
            return {name: zf.read(name) for name in zf.namelist()}

    def output(self, path: str) -> str:
        return self.uploaded(path)[f"output_{self.names.exchange}_probe.txt"].decode()

    def leaked_containers(self) -> list[str]:
        return self.engine.containers_of(self.node_id)


@contextlib.asynccontextmanager
async def probe_node(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp: FtpServer,
    engine: Engine,
    tmp_path: Path,
    settings: str = "",
    **overrides: object,
) -> AsyncIterator[Probe]:
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    values = {"ULOS_EXECUTORS_FILE": probe_registry(tmp_path, settings), **overrides}
    node = node_settings(names, broker, ftp, work_dir, **values)
    probe = Probe(line, names, ftp, engine, node.node_id)
    async with running_node(node):
        yield probe
    assert list(work_dir.iterdir()) == [], "a task's temp directory was left behind"
    assert probe.leaked_containers() == [], "a container outlived its task"


StartProbe = Callable[..., AbstractAsyncContextManager[Probe]]


@pytest.fixture
def env(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    docker_engine: Engine,
    tmp_path: Path,
) -> StartProbe:
    """`async with env(settings, **node_overrides) as probe:` runs a probe node."""

    def start(settings: str = "", **overrides: object) -> AbstractAsyncContextManager[Probe]:
        return probe_node(
            line, names, broker, ftp_server, docker_engine, tmp_path, settings, **overrides
        )

    return start


WRITES_RESULTS = """
    import os, pathlib
    print("hello from the container, uid", os.getuid())
    pathlib.Path("results").mkdir()
    pathlib.Path("results/report.txt").write_text("10/10\\n")
    pathlib.Path("locked").mkdir()
    pathlib.Path("locked/secret.txt").write_text("s")
    os.chmod("locked/secret.txt", 0)
    os.chmod("locked", 0)
    os.remove("delete-me.txt")
"""


async def test_pass_runs_as_non_root_and_brings_results_back(
    env: StartProbe, line: Pipeline
) -> None:
    async with env() as probe:
        path = await probe.submit(WRITES_RESULTS, files={"delete-me.txt": "x", "src/lib.py": "X=1"})
        forwarded = await line.next_json("next")
        await line.logs_until("task-1", "acked")

    assert forwarded["taskId"] == "task-1"
    files = probe.uploaded(path)
    assert files["results/report.txt"] == b"10/10\n"
    assert files["locked/secret.txt"] == b"s"
    assert files["src/lib.py"] == b"X=1"
    assert "delete-me.txt" not in files
    output = probe.output(path)
    assert "hello from the container, uid 10001" in output
    assert "[ulos-py] pass by rule exit-code" in output


async def test_nonzero_exit_takes_the_failure_branch(env: StartProbe, line: Pipeline) -> None:
    async with env() as probe:
        path = await probe.submit("import sys\nprint('2 tests failed')\nsys.exit(1)\n")
        forwarded = await line.next_json("failed")

    assert forwarded["taskId"] == "task-1"
    assert "2 tests failed" in probe.output(path)
    assert "exited with status 1" in probe.output(path)


async def test_marker_rule_passes_on_the_file_and_removes_it(
    env: StartProbe, line: Pipeline
) -> None:
    run_py = "import pathlib, sys\npathlib.Path('PASSED').touch()\nsys.exit(4)\n"
    async with env('success = "marker:PASSED"\n') as probe:
        path = await probe.submit(run_py)
        await line.next_json("next")

    assert "PASSED" not in probe.uploaded(path)


SLEEPS = "import time\nprint('working', flush=True)\ntime.sleep(60)\n"


async def test_timeout_kills_and_removes_the_container_and_crashes(
    env: StartProbe, line: Pipeline
) -> None:
    async with env() as probe:
        await probe.submit(SLEEPS, timeout=2)
        crash = await line.next_json("crashes")
        assert probe.leaked_containers() == []  # gone at crash time, not only at shutdown

    assert crash["error"]["kind"] == "timeout"
    assert line.empty("next") and line.empty("failed")


async def test_timeout_may_count_as_fail(env: StartProbe, line: Pipeline) -> None:
    async with env('on_timeout = "fail"\n') as probe:
        path = await probe.submit(SLEEPS, timeout=2)
        await line.next_json("failed")

    assert "timed out after 2 s" in probe.output(path)


CONNECTS = """
    import socket, sys
    reached = []
    for host, port in [("{gateway}", {port}), ("1.1.1.1", 53)]:
        try:
            socket.create_connection((host, port), timeout=3).close()
            reached.append(f"{{host}}:{{port}}")
        except OSError as exc:
            print(f"{{host}}:{{port}} unreachable: {{exc}}")
    print("reached:", reached)
    sys.exit(3 if reached else 0)
"""


@pytest.mark.parametrize(
    ("settings", "branch"), [("", "next"), ("[limits]\nnetwork = true\n", "failed")]
)
async def test_no_network_unless_the_executor_allows_it(
    env: StartProbe,
    line: Pipeline,
    broker: Broker,
    docker_engine: Engine,
    settings: str,
    branch: str,
) -> None:
    # With network allowed, the container reaches the broker on the host: so the
    # default's "unreachable" is the sandbox at work, not a broken probe.
    run_py = CONNECTS.format(gateway=docker_engine.bridge_gateway, port=broker.port)
    async with env(settings) as probe:
        path = await probe.submit(run_py)
        await line.next_json(branch)

    output = probe.output(path)
    if branch == "next":
        assert "reached: []" in output
    else:
        assert f"reached: ['{docker_engine.bridge_gateway}:{broker.port}'" in output


FORK_BOMB = """
    import os, sys, time
    refused = 0
    end = time.time() + 3
    while time.time() < end:
        try:
            os.fork()
        except OSError:
            refused += 1
    if os.getpid() == 1:
        print("fork refused", refused, "times")
    sys.exit(0)
"""

MEMORY_HOG = """
    hog = [b"x" * (64 << 20) for _ in range(64)]  # 4 GiB, every page written
    print("the memory limit did not hold")
"""

HARMLESS = "print('still here')\n"


async def test_fork_bomb_and_memory_hog_are_contained_and_the_node_goes_on(
    env: StartProbe, line: Pipeline
) -> None:
    async with env() as probe:
        bomb = await probe.submit(FORK_BOMB)
        hog = await probe.submit(MEMORY_HOG)
        after = await probe.submit(HARMLESS)
        passed = {(await line.next_json("next", timeout=60))["taskId"] for _ in range(2)}
        failed = (await line.next_json("failed", timeout=60))["taskId"]

    assert passed == {"task-1", "task-3"}
    assert failed == "task-2"
    assert "fork refused" in probe.output(bomb)
    assert "[ulos-py] killed: out of memory (limit 256m)" in probe.output(hog)
    assert "did not hold" not in probe.output(hog)
    assert "still here" in probe.output(after)


async def test_engine_over_tcp_going_away_crashes_tasks_and_recovers(
    env: StartProbe, line: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = EngineProxy()
    await proxy.start()
    monkeypatch.setenv("DOCKER_HOST", f"tcp://127.0.0.1:{proxy.port}")
    try:
        async with env() as probe:
            first = await probe.submit(HARMLESS)
            assert (await line.next_json("next"))["taskId"] == "task-1"

            await proxy.stop()
            await probe.submit(HARMLESS)
            crash = await line.next_json("crashes")

            await proxy.start()  # the engine is back, on the same address
            await probe.submit(HARMLESS)
            assert (await line.next_json("next"))["taskId"] == "task-3"
    finally:
        await proxy.stop()

    assert "still here" in probe.output(first)
    assert crash["taskId"] == "task-2"
    assert crash["error"]["kind"] == "execution"
    assert (
        f"Docker engine at tcp://127.0.0.1:{proxy.port} does not answer" in crash["error"]["detail"]
    )


async def test_missing_image_crashes_with_a_clear_reason_and_the_node_goes_on(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    docker_engine: Engine,
    tmp_path: Path,
) -> None:
    registry = probe_registry(tmp_path, image="ulos-py-test/never-built")
    registry.write_text(
        registry.read_text()
        + '\n[[route]]\nstage = "skip"\nexecutor = "skip"\n\n'
        + '[executor.skip]\nkind = "builtin"\nbehaviour = "pass"\n'
    )
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    settings = node_settings(names, broker, ftp_server, work_dir, ULOS_EXECUTORS_FILE=registry)
    probe = Probe(line, names, ftp_server, docker_engine, settings.node_id)
    async with running_node(settings):
        await probe.submit(HARMLESS)
        crash = await line.next_json("crashes")
        path = f"/{names.prefix}/other.zip"
        ftp_server.put(path, make_zip({"a.txt": "a"}))
        await line.publish(
            task(
                "after",
                path,
                stage(names.exchange, "skip", success=stage(names.exchange, "next-key")),
            )
        )
        assert (await line.next_json("next"))["taskId"] == "after"

    assert crash["error"]["kind"] == "execution"
    assert (
        "image 'ulos-py-test/never-built' is not on the Docker engine" in crash["error"]["detail"]
    )
    assert "ulos-py executors build" in crash["error"]["detail"]


async def test_shutdown_mid_execution_removes_the_container_and_requeues(
    env: StartProbe, line: Pipeline
) -> None:
    async with env(ULOS_SHUTDOWN_GRACE=0.5) as probe:
        await probe.submit(SLEEPS)
        await line.logs_until("task-1", "execution_started")
        await asyncio.sleep(1)  # the container is running now
        [running] = probe.engine.client.containers.list(
            filters={"label": f"ulos-py.node={probe.node_id}"}
        )
        assert running.attrs["Mounts"] == []  # files came in through the API, not a bind mount
    # probe_node checked on the way out that no container is left

    assert await line.depth() == 1  # back in the queue for another node


EXECUTORS = PROBE_EXECUTOR.parents[2] / "executors"
EXAMPLES = sorted(EXECUTORS.glob("*/examples/*/"))


async def test_every_shipped_example_decides_as_its_name_says(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    """executors/<name>/examples/pass-* must PASS through a node, fail-* must FAIL."""
    assert len(EXAMPLES) >= 9, EXAMPLES
    work_dir = tmp_path / "work"
    work_dir.mkdir()
    expected: dict[str, str] = {}
    for example in EXAMPLES:
        executor = example.parents[1].name
        task_id = f"{executor}/{example.name}"
        path = f"/{names.prefix}/{executor}-{example.name}.zip"
        ftp_server.put(path, zip_folder(example))
        tree = stage(
            names.exchange,
            executor,
            success=stage(names.exchange, "next-key"),
            failure=stage(names.exchange, "failed-key"),
        )
        await line.publish(task(task_id, path, tree, timeout=60))
        expected[task_id] = "next" if example.name.startswith("pass-") else "failed"

    settings = node_settings(names, broker, ftp_server, work_dir, MESSAGE_BROKER_PREFETCH_COUNT=2)
    arrived: dict[str, str] = {}
    async with running_node(settings):
        for _ in expected:
            done = await asyncio.wait_for(_first_arrival(line), 90)
            arrived.update(done)

    assert arrived == expected


async def _first_arrival(line: Pipeline) -> dict[str, str]:
    """The next task to reach the success or failure key, whichever comes first."""
    while True:
        for which in ("next", "failed"):
            if not line.empty(which):
                return {(await line.next_json(which))["taskId"]: which}
        await asyncio.sleep(0.1)
