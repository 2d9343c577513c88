"""The docker executor's logic on an in-memory engine: settings, tar transfer, decisions.

The real engine is exercised in tests/integration/test_docker.py; here every rule is
pinned down without one, quickly.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
import tarfile
from pathlib import Path, PurePosixPath

import pytest

from tests.support.fakes import FakeEngine, zip_bytes, zip_names
from ulos_py.archive import ArchiveLimits
from ulos_py.errors import ConfigError, ExecutionCrashed
from ulos_py.execution.docker import DockerExecutor
from ulos_py.execution.docker_spec import SuccessRule, load_docker_spec, parse_size
from ulos_py.execution.transfer import pack_for_container, unpack_from_container
from ulos_py.models import Outcome, RoutingNode
from ulos_py.ports import TimeoutPolicy
from ulos_py.task_files import WorkspaceFiles

STAGE = RoutingNode(exchange="lab", routing_key="check")


def executor_folder(tmp_path: Path, settings: str = 'image = "lab/check"\n') -> Path:
    folder = tmp_path / "check"
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM scratch\n")
    (folder / "executor.toml").write_text(settings)
    return folder


def make_executor(tmp_path: Path, engine: FakeEngine, settings: str = "") -> DockerExecutor:
    folder = executor_folder(tmp_path, 'image = "lab/check"\n' + settings)
    return DockerExecutor(load_docker_spec("check", folder), engine, "node-1")


def tree(tmp_path: Path) -> Path:
    workdir = tmp_path / "files"
    (workdir / "src").mkdir(parents=True)
    (workdir / "main.py").write_text("print('hi')\n")
    (workdir / "src" / "util.py").write_text("X = 1\n")
    return workdir


async def submission(tmp_path: Path) -> WorkspaceFiles:
    """The same submission as a task's files: a checked zip, never unpacked."""
    root = tmp_path / "space"
    root.mkdir()
    files = WorkspaceFiles(root)
    files.downloaded.write_bytes(zip_bytes({"main.py": "print('hi')\n", "src/util.py": "X = 1\n"}))
    await files.check(ArchiveLimits())
    return files


async def uploaded(files: WorkspaceFiles) -> dict[str, bytes]:
    """What would be uploaded (with an output file `out.txt`)."""
    return zip_names((await files.seal("out.txt", "output\n")).read_bytes())


# --- settings ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size"),
    [("256m", 256 << 20), ("1g", 1 << 30), ("512k", 512 << 10), ("1048576", 1 << 20)],
)
def test_sizes_read_like_docker(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_defaults_are_the_sandbox(tmp_path: Path) -> None:
    spec = load_docker_spec("check", executor_folder(tmp_path))
    limits = spec.settings.limits

    assert (limits.network, limits.drop_capabilities, limits.no_new_privileges) == (
        False,
        True,
        True,
    )
    assert (limits.memory, limits.cpus, limits.pids, limits.user) == (
        "256m",
        1.0,
        128,
        "10001:10001",
    )
    assert spec.settings.mount == "/task"
    assert spec.rule == SuccessRule()
    assert spec.settings.on_timeout is TimeoutPolicy.CRASH


@pytest.mark.parametrize(
    ("settings", "hint"),
    [
        pytest.param('success = "marker:/etc/passwd"\n', "success", id="absolute-marker"),
        pytest.param('success = "marker:../x"\n', "success", id="escaping-marker"),
        pytest.param('success = "exit"\n', "success", id="unknown-rule"),
        pytest.param('mount = "/"\n', "mount", id="root-mount"),
        pytest.param('mount = "task"\n', "mount", id="relative-mount"),
        pytest.param('[limits]\nuser = "runner"\n', "user", id="named-user"),
        pytest.param('[limits]\nmemory = "lots"\n', "memory", id="bad-size"),
        pytest.param('[limits]\nmemory = "4k"\n', "memory", id="tiny-memory"),
        pytest.param("[limits]\npids = 2\n", "pids", id="too-few-pids"),
        pytest.param("[limits]\nnetwrok = true\n", "netwrok", id="typo"),
        pytest.param('on_timeout = "retry"\n', "on_timeout", id="bad-policy"),
    ],
)
def test_bad_settings_are_one_config_error(tmp_path: Path, settings: str, hint: str) -> None:
    folder = executor_folder(tmp_path, 'image = "lab/check"\n' + settings)

    with pytest.raises(ConfigError, match=hint):
        load_docker_spec("check", folder)


def test_missing_image_or_dockerfile_is_a_config_error(tmp_path: Path) -> None:
    folder = executor_folder(tmp_path, "mount = '/task'\n")
    with pytest.raises(ConfigError, match="image"):
        load_docker_spec("check", folder)
    (folder / "Dockerfile").unlink()
    with pytest.raises(ConfigError, match="Dockerfile"):
        load_docker_spec("check", folder)


# --- transfer ----------------------------------------------------------------------------


def test_files_go_in_owned_by_the_container_user(tmp_path: Path) -> None:
    stream = pack_for_container(tree(tmp_path), PurePosixPath("/task"), (10001, 10002))

    with stream, tarfile.open(fileobj=stream) as tar:
        members = tar.getmembers()

    assert sorted(m.name for m in members) == [
        "task",
        "task/main.py",
        "task/src",
        "task/src/util.py",
    ]
    assert {(m.uid, m.gid) for m in members} == {(10001, 10002)}


def container_tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> io.BytesIO:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for info, data in entries:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    stream.seek(0)
    return stream


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.uid, info.gid = kind, mode, 10001, 10001
    return info


def test_results_come_back_readable_and_deletable_whatever_the_container_set(
    tmp_path: Path,
) -> None:
    stream = container_tar(
        [
            (entry("task", tarfile.DIRTYPE, 0o755), b""),
            (entry("task/locked", tarfile.DIRTYPE, 0o000), b""),
            (entry("task/locked/secret.txt", mode=0o000), b"s"),
            (entry("task/setuid", mode=0o4755), b"x"),
        ]
    )

    unpack_from_container(stream, tmp_path, ArchiveLimits())

    secret = tmp_path / "locked" / "secret.txt"
    assert secret.read_bytes() == b"s"
    assert stat.S_IMODE(secret.stat().st_mode) & 0o600 == 0o600
    assert stat.S_IMODE((tmp_path / "locked").stat().st_mode) & 0o700 == 0o700
    assert stat.S_IMODE((tmp_path / "setuid").stat().st_mode) & 0o7000 == 0
    assert {p.stat().st_uid for p in tmp_path.rglob("*")} == {os.geteuid()}
    secret.unlink()
    (tmp_path / "locked").rmdir()


def test_links_and_devices_are_left_out_and_named(tmp_path: Path) -> None:
    link = entry("task/passwd", tarfile.SYMTYPE)
    link.linkname = "/etc/passwd"
    stream = container_tar(
        [(entry("task/ok.txt"), b"ok"), (link, b""), (entry("task/null", tarfile.CHRTYPE), b"")]
    )

    left_out = unpack_from_container(stream, tmp_path, ArchiveLimits())

    assert left_out == ["passwd", "null"]
    assert [p.name for p in tmp_path.iterdir()] == ["ok.txt"]


def test_an_entry_escaping_the_task_directory_crashes(tmp_path: Path) -> None:
    stream = container_tar([(entry("task/../../escaped.txt"), b"x")])

    with pytest.raises(ExecutionCrashed, match="unsafe"):
        unpack_from_container(stream, tmp_path / "work", ArchiveLimits())

    assert not (tmp_path.parent / "escaped.txt").exists()


@pytest.mark.parametrize(
    ("limits", "count", "size"),
    [(ArchiveLimits(max_entries=3), 4, 1), (ArchiveLimits(max_total_bytes=100), 2, 60)],
)
def test_results_over_the_archive_limits_crash(
    tmp_path: Path, limits: ArchiveLimits, count: int, size: int
) -> None:
    stream = container_tar([(entry(f"task/f{i}"), b"x" * size) for i in range(count)])

    with pytest.raises(ExecutionCrashed, match="more than"):
        unpack_from_container(stream, tmp_path, limits)


# --- the executor ------------------------------------------------------------------------


def exits_with(status: int, write: dict[str, str] | None = None, delete: tuple[str, ...] = ()):  # type: ignore[no-untyped-def]
    async def program(task_dir: Path) -> int:
        for name, text in (write or {}).items():
            (task_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (task_dir / name).write_text(text)
        for name in delete:
            (task_dir / name).unlink()
        return status

    return program


async def test_exit_zero_passes_and_results_replace_the_task_directory(tmp_path: Path) -> None:
    engine = FakeEngine(exits_with(0, {"results/report.txt": "all good\n"}, delete=("main.py",)))
    files = await submission(tmp_path)

    result = await make_executor(tmp_path, engine).run(files, STAGE)

    assert result.outcome is Outcome.PASS
    after = await uploaded(files)
    assert after["results/report.txt"] == b"all good\n"
    assert "main.py" not in after  # what the container deleted stays deleted
    assert after["src/util.py"] == b"X = 1\n"
    assert not (tmp_path / "space" / "files").exists()  # no tree on the node
    assert result.output.startswith("container says hi\n")
    assert "pass by rule exit-code" in result.output
    assert engine.live == 0


async def test_nonzero_exit_fails(tmp_path: Path) -> None:
    engine = FakeEngine(exits_with(3))

    result = await make_executor(tmp_path, engine).run(await submission(tmp_path), STAGE)

    assert result.outcome is Outcome.FAIL
    assert "exited with status 3" in result.output


@pytest.mark.parametrize(
    ("write", "outcome"), [({"out/PASSED": ""}, Outcome.PASS), ({}, Outcome.FAIL)]
)
async def test_marker_rule_decides_by_the_file_and_removes_it(
    tmp_path: Path, write: dict[str, str], outcome: Outcome
) -> None:
    engine = FakeEngine(exits_with(1, write))  # the exit status does not count for markers
    files = await submission(tmp_path)

    result = await make_executor(tmp_path, engine, 'success = "marker:out/PASSED"\n').run(
        files, STAGE
    )

    assert result.outcome is outcome
    assert "out/PASSED" not in await uploaded(files)


async def test_container_gets_the_sandbox_and_labels(tmp_path: Path) -> None:
    engine = FakeEngine(exits_with(0))
    settings = '[environment]\nLAB = "7"\n[limits]\nmemory = "1g"\ncpus = 0.5\n'

    await make_executor(tmp_path, engine, settings).run(await submission(tmp_path), STAGE)

    [spec] = engine.specs
    assert (spec.image, spec.user, spec.working_dir) == ("lab/check", "10001:10001", "/task")
    assert (spec.network, spec.drop_capabilities, spec.no_new_privileges) == (False, True, True)
    assert (spec.memory_bytes, spec.nano_cpus, spec.pids) == (1 << 30, 500_000_000, 128)
    assert spec.environment == {"HOME": "/tmp", "LAB": "7"}
    assert spec.labels["ulos-py.node"] == "node-1"
    assert spec.labels["ulos-py.stage"] == "check"


async def test_cancellation_removes_the_container(tmp_path: Path) -> None:
    started = asyncio.Event()

    async def forever(task_dir: Path) -> int:
        started.set()
        await asyncio.Event().wait()
        return 0

    engine = FakeEngine(forever)
    files = await submission(tmp_path)
    running = asyncio.create_task(make_executor(tmp_path, engine).run(files, STAGE))
    await started.wait()
    running.cancel()

    with pytest.raises(asyncio.CancelledError):
        await running
    assert (engine.created, engine.live) == (1, 0)
