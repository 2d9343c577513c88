"""The docker executor: one sandboxed container per task, removed on every way out.

    pack files → create → copy in → start → wait → read output → copy out → remove → decide

A timeout, a cancellation or a node shutdown cancels `run`; the engine's container context
kills and removes the container before the cancellation goes on, so none outlives its task.
The engine's errors (it does not answer, the image is missing, it refused) are the task's
ExecutionCrashed here, with the engine's words as the detail.
"""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ulos_py.archive import ArchiveLimits
from ulos_py.errors import EngineError, ExecutionCrashed
from ulos_py.execution.containers import ContainerEngine, ContainerExit, ContainerSpec
from ulos_py.execution.docker_spec import DockerExecutorSpec, parse_size
from ulos_py.execution.transfer import (
    pack_for_container,
    spool,
    stream_limit,
    unpack_from_container,
)
from ulos_py.models import Outcome, RoutingNode
from ulos_py.ports import ExecutionResult, TimeoutPolicy


@dataclass(frozen=True)
class DockerExecutor:
    spec: DockerExecutorSpec
    engine: ContainerEngine
    node_id: str
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def on_timeout(self) -> TimeoutPolicy:
        return self.spec.settings.on_timeout

    async def run(self, workdir: Path, stage: RoutingNode) -> ExecutionResult:
        mount = PurePosixPath(self.spec.settings.mount)
        owner = self.spec.settings.limits.uid_gid
        files_in = await asyncio.to_thread(pack_for_container, workdir, mount, owner)
        files_out = spool()
        try:
            try:
                async with self.engine.container(self._container_spec(stage)) as container:
                    await container.copy_in(str(mount.parent), files_in)
                    await container.start()
                    ended = await container.wait()
                    output = await container.output()
                    await container.copy_out(str(mount), files_out, stream_limit(self.limits))
            except EngineError as exc:
                raise ExecutionCrashed(str(exc)) from exc
            left_out = await asyncio.to_thread(_replace_files, workdir, files_out, self.limits)
        finally:
            files_in.close()
            files_out.close()
        outcome = self._decide(workdir, ended)
        return ExecutionResult(outcome, output + self._footer(ended, outcome, left_out))

    def _container_spec(self, stage: RoutingNode) -> ContainerSpec:
        settings = self.spec.settings
        limits = settings.limits
        return ContainerSpec(
            image=settings.image,
            command=settings.command or None,  # an empty list means the image's CMD
            working_dir=settings.mount,
            user=limits.user,
            environment={"HOME": "/tmp", **settings.environment},
            network=limits.network,
            memory_bytes=parse_size(limits.memory),
            nano_cpus=int(limits.cpus * 1e9),
            pids=limits.pids,
            drop_capabilities=limits.drop_capabilities,
            no_new_privileges=limits.no_new_privileges,
            output_bytes=parse_size(limits.output_limit),
            labels={
                "ulos-py.executor": self.name,
                "ulos-py.node": self.node_id,
                "ulos-py.stage": stage.routing_key,
            },
        )

    def _decide(self, workdir: Path, ended: ContainerExit) -> Outcome:
        marker = self.spec.rule.marker
        if marker is None:
            return Outcome.PASS if ended.status == 0 else Outcome.FAIL
        marker_file = workdir / marker
        if not marker_file.is_file():
            return Outcome.FAIL
        marker_file.unlink()  # the marker is the executor's signal, not a result
        return Outcome.PASS

    def _footer(self, ended: ContainerExit, outcome: Outcome, left_out: list[str]) -> str:
        memory = self.spec.settings.limits.memory
        lines = [f"[ulos-py] container exited with status {ended.status}"]
        if ended.oom_killed:
            lines.append(f"[ulos-py] killed: out of memory (limit {memory})")
        if left_out:
            lines.append(f"[ulos-py] links and special files not kept: {', '.join(left_out)}")
        lines.append(f"[ulos-py] {outcome.value} by rule {self.spec.rule.describe()}")
        return "\n" + "\n".join(lines) + "\n"


def _replace_files(workdir: Path, tar: BinaryIO, limits: ArchiveLimits) -> list[str]:
    """The task directory becomes what the container left: deletions included."""
    shutil.rmtree(workdir)
    workdir.mkdir()
    return unpack_from_container(tar, workdir, limits)
