"""The executor registry: a TOML file mapping stage routing keys to executors.

Executors are data, not code: adding a stage type means editing the file, not the node.
Routes are tried in order and the first matching pattern (exact name or shell glob) wins.
A `docker` executor names a folder beside the registry holding its Dockerfile, entry
script and `executor.toml`; the node decides how to run it (`docker` factory).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ulos_py.errors import ConfigError
from ulos_py.execution.builtin import Behaviour, BuiltinExecutor
from ulos_py.execution.docker_spec import DockerExecutorSpec, load_docker_spec
from ulos_py.ports import Executor, TimeoutPolicy
from ulos_py.tomlfile import StrictFile, load_toml


class BuiltinSpec(StrictFile):
    kind: Literal["builtin"]
    behaviour: Behaviour
    delay_seconds: Annotated[float, Field(ge=0)] = 0.0
    on_timeout: TimeoutPolicy = TimeoutPolicy.CRASH


class DockerRef(StrictFile):
    kind: Literal["docker"]
    folder: str | None = None
    """Relative to the registry file; the executor's name by default."""


class RouteSpec(StrictFile):
    stage: Annotated[str, Field(min_length=1)]
    executor: str


class RegistryFile(StrictFile):
    route: list[RouteSpec]
    executor: dict[str, Annotated[BuiltinSpec | DockerRef, Field(discriminator="kind")]]


@dataclass(frozen=True)
class Registry:
    """Ordered (pattern, executor) pairs."""

    routes: tuple[tuple[str, Executor], ...]

    def select(self, routing_key: str) -> Executor | None:
        for pattern, executor in self.routes:
            if fnmatchcase(routing_key, pattern):
                return executor
        return None


DockerFactory = Callable[[DockerExecutorSpec], Executor]


@dataclass(frozen=True)
class RegistryPlan:
    """The registry file read and checked, before any executor exists."""

    path: Path
    routes: tuple[tuple[str, str], ...]
    executors: dict[str, BuiltinSpec | DockerExecutorSpec]

    @property
    def docker_specs(self) -> list[DockerExecutorSpec]:
        return [s for s in self.executors.values() if isinstance(s, DockerExecutorSpec)]

    def patterns_of(self, name: str) -> list[str]:
        return [pattern for pattern, executor in self.routes if executor == name]

    def with_bases(self, specs: list[DockerExecutorSpec]) -> list[DockerExecutorSpec]:
        """`specs` and the executors they build on, each base before the images on it."""
        ordered: list[DockerExecutorSpec] = []
        for spec in specs:
            chain = [spec]
            while (base := chain[-1].settings.base) is not None:
                chain.append(self._docker(base))
            ordered.extend(s for s in reversed(chain) if s not in ordered)
        return ordered

    def _docker(self, name: str) -> DockerExecutorSpec:
        spec = self.executors.get(name)
        if not isinstance(spec, DockerExecutorSpec):
            raise ConfigError(f"executor registry {self.path}: {name!r} is not a docker executor")
        return spec


def read_registry(path: Path) -> RegistryPlan:
    """Read and check a registry file; every problem becomes one ConfigError line."""
    spec = load_toml(path, RegistryFile, "executor registry")
    executors: dict[str, BuiltinSpec | DockerExecutorSpec] = {}
    for name, entry in spec.executor.items():
        if isinstance(entry, DockerRef):
            executors[name] = load_docker_spec(name, path.parent / (entry.folder or name))
        else:
            executors[name] = entry
    for route in spec.route:
        if route.executor not in executors:
            raise ConfigError(
                f"executor registry {path}: route {route.stage!r} names unknown executor "
                f"{route.executor!r}"
            )
    plan = RegistryPlan(path, tuple((r.stage, r.executor) for r in spec.route), executors)
    _check_bases(plan)
    return plan


def _check_bases(plan: RegistryPlan) -> None:
    """Every `base` names a docker executor of the registry, and no image builds on itself."""
    for spec in plan.docker_specs:
        seen = [spec.name]
        base = spec.settings.base
        while base is not None:
            target = plan.executors.get(base)
            if not isinstance(target, DockerExecutorSpec):
                raise ConfigError(
                    f"executor {spec.name!r}: base {base!r} is not a docker executor of {plan.path}"
                )
            if base in seen:
                raise ConfigError(
                    f"executor {spec.name!r}: its images build on each other in a circle: "
                    f"{' -> '.join([*seen, base])}"
                )
            seen.append(base)
            base = target.settings.base


def load_registry(path: Path, docker: DockerFactory) -> Registry:
    """The registry's executors, docker ones made by `docker`, in route order."""
    plan = read_registry(path)
    made: dict[str, Executor] = {}
    for name, spec in plan.executors.items():
        if isinstance(spec, DockerExecutorSpec):
            made[name] = docker(spec)
        else:
            made[name] = BuiltinExecutor(name, spec.behaviour, spec.delay_seconds, spec.on_timeout)
    return Registry(tuple((pattern, made[name]) for pattern, name in plan.routes))
