"""Running the shipped executor images on submissions, as the executor tests do."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.services import REGISTRY
from ulos_py.execution.docker_spec import DockerExecutorSpec, load_docker_spec, parse_size

EXECUTORS = REGISTRY.parent


EXECUTOR_NAMES = ("python-check", "pytest-grader", "gcode-check")


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


def give_to(folder: Path, uid: int, gid: int) -> None:
    """chown -R, as the node hands files to the container's user."""
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, uid, gid, follow_symlinks=False)


def sandbox(spec: DockerExecutorSpec) -> dict[str, Any]:
    """docker-py create() arguments for the executor's sandbox."""
    limits = spec.settings.limits
    return {
        "network_mode": "bridge" if limits.network else "none",
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
