"""The docker executor: one sandboxed container per task, removed on every way out.

    files as tar → create → copy in → start → wait → read output → copy out → remove →
    tar becomes the task's files → decide

The files travel as tar streams made from the task's zip and turned back into it
(`TaskFiles.tar_for`, `take_tar`): no tree of them is written on the node.

A timeout, a cancellation or a node shutdown cancels `run`; the engine's container context
kills and removes the container before the cancellation goes on, so none outlives its task.
The engine's errors (it does not answer, the image is missing, it refused) are the task's
ExecutionCrashed here, with the engine's words as the detail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from ulos_py.archive import ArchiveLimits
from ulos_py.errors import EngineError, ExecutionCrashed
from ulos_py.execution.containers import ContainerEngine, ContainerExit, ContainerSpec
from ulos_py.execution.docker_spec import DockerExecutorSpec, parse_size
from ulos_py.execution.transfer import spool, stream_limit
from ulos_py.models import Outcome, RoutingNode
from ulos_py.ports import ExecutionResult, TaskFiles, TimeoutPolicy


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

    async def run(self, files: TaskFiles, stage: RoutingNode) -> ExecutionResult:
        mount = PurePosixPath(self.spec.settings.mount)
        owner = self.spec.settings.limits.uid_gid
        files_in = await files.tar_for(mount, owner)
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
            results = await files.take_tar(files_out, self.spec.rule.marker)
        finally:
            files_in.close()
            files_out.close()
        outcome = self._decide(results.marker_found, ended)
        return ExecutionResult(outcome, output + self._footer(ended, outcome, results.left_out))

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

    def _decide(self, marker_found: bool, ended: ContainerExit) -> Outcome:
        if self.spec.rule.marker is None:
            return Outcome.PASS if ended.status == 0 else Outcome.FAIL
        return Outcome.PASS if marker_found else Outcome.FAIL  # the marker itself is not kept

    def _footer(self, ended: ContainerExit, outcome: Outcome, left_out: list[str]) -> str:
        memory = self.spec.settings.limits.memory
        lines = [f"[ulos-py] container exited with status {ended.status}"]
        if ended.oom_killed:
            lines.append(f"[ulos-py] killed: out of memory (limit {memory})")
        if left_out:
            lines.append(f"[ulos-py] links and special files not kept: {', '.join(left_out)}")
        lines.append(f"[ulos-py] {outcome.value} by rule {self.spec.rule.describe()}")
        return "\n" + "\n".join(lines) + "\n"
