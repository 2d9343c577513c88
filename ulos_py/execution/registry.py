"""The executor registry: a TOML file mapping stage routing keys to executors.

Executors are data, not code: adding a stage type means editing the file, not the node.
Routes are tried in order and the first matching pattern (exact name or shell glob) wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from ulos_py.errors import ConfigError
from ulos_py.execution.builtin import Behaviour, BuiltinExecutor
from ulos_py.ports import Executor, TimeoutPolicy
from ulos_py.tomlfile import StrictFile, load_toml


class BuiltinSpec(StrictFile):
    kind: Literal["builtin"]
    behaviour: Behaviour
    delay_seconds: Annotated[float, Field(ge=0)] = 0.0
    on_timeout: TimeoutPolicy = TimeoutPolicy.CRASH


class RouteSpec(StrictFile):
    stage: Annotated[str, Field(min_length=1)]
    executor: str


class RegistryFile(StrictFile):
    route: list[RouteSpec]
    executor: dict[str, BuiltinSpec]


@dataclass(frozen=True)
class Registry:
    """Ordered (pattern, executor) pairs."""

    routes: tuple[tuple[str, Executor], ...]

    def select(self, routing_key: str) -> Executor | None:
        for pattern, executor in self.routes:
            if fnmatchcase(routing_key, pattern):
                return executor
        return None


def _build(name: str, spec: BuiltinSpec) -> Executor:
    return BuiltinExecutor(name, spec.behaviour, spec.delay_seconds, spec.on_timeout)


def load_registry(path: Path) -> Registry:
    """Read and check a registry file; every problem becomes one ConfigError line."""
    spec = load_toml(path, RegistryFile, "executor registry")
    executors = {name: _build(name, s) for name, s in spec.executor.items()}
    routes = []
    for route in spec.route:
        if route.executor not in executors:
            raise ConfigError(
                f"executor registry {path}: route {route.stage!r} names unknown executor "
                f"{route.executor!r}"
            )
        routes.append((route.stage, executors[route.executor]))
    return Registry(tuple(routes))
