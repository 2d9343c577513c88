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
from itertools import count
from pathlib import Path

import pytest
from testcontainers.core.container import DockerContainer
from testcontainers.core.labels import LABEL_SESSION_ID, SESSION_ID

from tests.support.executors import (
    RUN_TIMEOUT,
    Run,
    RunExecutor,
    give_to,
    load_settings,
    sandbox,
)
from tests.support.services import Engine

# The ryuk reaper image cannot be pulled here; every container below is removed by its own
# context manager instead. testcontainers reads this when the first container starts.
os.environ["TESTCONTAINERS_RYUK_DISABLED"] = "true"


@pytest.fixture(scope="session")
def executor_image(executor_images: list[str]) -> Callable[[str], str]:
    """`executor_image(name)`: the executor's image tag, built by the product's own build."""

    def image(name: str) -> str:
        tag = load_settings(name).settings.image
        assert tag in executor_images, f"{tag} was not built"
        return tag

    return image


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
