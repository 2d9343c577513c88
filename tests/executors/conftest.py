"""Executor images under test: built once per session, run the way the node runs them.

The images are built by the product's own `executors build` code (tests/conftest.py);
here testcontainers runs them directly, without a node, to test each grader on its own.
Each run gets a fresh copy of a submission owned by the container's user, bind-mounted at
the executor's mount point, inside the sandbox its executor.toml asks for, as the node
reads it (ulos_py.execution.docker_spec). A missing Docker engine or image FAILS the
run: a skipped image test proves nothing.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID

from tests.conftest import REGISTRY, Engine
from ulos_py.execution.docker_spec import DockerExecutorSpec, load_docker_spec, parse_size
from ulos_py.execution.registry import read_registry

# The ryuk reaper image cannot be pulled here; every container below is removed by its own
# context manager instead. testcontainers reads this when the first container starts.
os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"

EXECUTORS = REGISTRY.parent
EXECUTOR_NAMES = tuple(spec.name for spec in read_registry(REGISTRY).docker_specs)
RUN_TIMEOUT = 60  # seconds one container may run before the test gives up


def load_settings(name: str) -> DockerExecutorSpec:
    """The executor's settings as the node reads them, defaults and checks included."""
    return load_docker_spec(name, EXECUTORS / name)


@dataclass(frozen=True)
class Run:
    """One finished container run: its exit code, captured output and the task folder."""

    spec: DockerExecutorSpec
    exit_code: int
    output: str
    task: Path

    @property
    def passed(self) -> bool:
        """The outcome by the executor's own success rule, as the node decides it."""
        marker = self.spec.rule.marker
        if marker is None:
            return self.exit_code == 0
        return (self.task / marker).is_file()

    def read(self, relative: str) -> str:
        path = self.task / relative
        assert path.is_file(), f"{relative} was not written; output:\n{self.output}"
        return path.read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def executor_image(executor_images: list[str]) -> Callable[[str], str]:
    """`executor_image(name)`: the executor's image tag, built by the product's own build."""

    def image(name: str) -> str:
        tag = load_settings(name).settings.image
        assert tag in executor_images, f"{tag} was not built"
        return tag

    return image


def give_to(folder: Path, uid: int, gid: int) -> None:
    """chown -R, as the node hands files to the container's user."""
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)


def sandbox(spec: DockerExecutorSpec) -> dict[str, Any]:
    """docker-py create() arguments for the executor's sandbox."""
    limits = spec.settings.limits
    return {
        "network_mode": "bridge" if limits.network else "none",
        # as the node does: with it, /etc/hosts is empty, so not even `localhost` resolves
        "network_disabled": not limits.network,
        "user": limits.user,
        "cap_drop": ["ALL"] if limits.drop_capabilities else None,
        "security_opt": ["no-new-privileges"] if limits.no_new_privileges else None,
        "mem_limit": parse_size(limits.memory),
        "memswap_limit": parse_size(limits.memory),
        "nano_cpus": int(limits.cpus * 1e9),
        "pids_limit": limits.pids,
        "working_dir": spec.settings.mount,
    }


RunExecutor = Callable[..., Run]


@pytest.fixture
def run_executor(
    executor_image: Callable[[str], str], docker_engine: Engine, tmp_path: Path
) -> Iterator[RunExecutor]:
    """`run_executor(name, submission, **extra_env)`: run the image on a copy of a folder."""
    numbers = count(1)

    def run(name: str, submission: Path, **extra_env: str) -> Run:
        spec = load_settings(name)
        settings = spec.settings
        task = tmp_path / f"task-{next(numbers)}"
        shutil.copytree(submission, task)
        give_to(task, *settings.limits.uid_gid)
        container = (
            DockerContainer(executor_image(name))
            .with_volume_mapping(str(task), settings.mount, "rw")
            .with_envs(**{"HOME": "/tmp", **settings.environment, **extra_env})
            .with_kwargs(**sandbox(spec))
        )
        if settings.command:
            container.with_command(settings.command)
        with container:
            wrapped = container.get_wrapped_container()
            status = wrapped.wait(timeout=RUN_TIMEOUT)
            output = wrapped.logs(stdout=True, stderr=True).decode("utf-8", errors="replace")
        return Run(spec, int(status["StatusCode"]), output, task)

    yield run
    leftovers = docker_engine.client.containers.list(
        all=True, filters={"label": f"{LABEL_SESSION_ID}={SESSION_ID}"}
    )
    assert not leftovers, f"containers not removed: {[c.name for c in leftovers]}"
