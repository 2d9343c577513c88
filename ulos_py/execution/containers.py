"""What the docker executor needs from a container engine, and nothing more.

The docker adapter (adapters/docker_engine.py) implements it, and unit tests use an
in-memory double; the lifecycle never sees containers, so these live beside the executor
rather than among its ports.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import BinaryIO, Protocol


@dataclass(frozen=True)
class ContainerSpec:
    """One sandboxed run of an image, as the engine should create it."""

    image: str
    command: list[str] | None
    working_dir: str
    user: str
    environment: dict[str, str]
    network: bool
    memory_bytes: int
    nano_cpus: int
    pids: int
    drop_capabilities: bool
    no_new_privileges: bool
    output_bytes: int
    labels: dict[str, str]


@dataclass(frozen=True)
class ContainerExit:
    status: int
    oom_killed: bool


class Container(Protocol):
    """A created container; the engine removes it when its context ends."""

    async def copy_in(self, directory: str, tar: BinaryIO) -> None:
        """Extract the tar stream into `directory`, which exists in the image."""

    async def start(self) -> None: ...

    async def wait(self) -> ContainerExit: ...

    async def output(self) -> str:
        """stdout and stderr, interleaved, at most the spec's `output_bytes` (the tail)."""

    async def copy_out(self, path: str, into: BinaryIO, max_bytes: int) -> None:
        """Write `path` as a tar stream into `into`; raise EngineError past `max_bytes`."""


class ContainerEngine(Protocol):
    """Raises EngineError (EngineUnavailable, ImageMissing, or the engine's refusal); never
    library errors. The docker executor turns them into the task's ExecutionCrashed."""

    def container(self, spec: ContainerSpec) -> AbstractAsyncContextManager[Container]:
        """Create a container; on every way out, even cancellation, kill and remove it."""
