"""The executor registry: a TOML file mapping stage routing keys to executors.

Executors are data, not code: adding a stage type means editing the file, not the node.
Routes are tried in order and the first matching pattern (exact name or shell glob) wins.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ulos_py.errors import ConfigError
from ulos_py.execution.builtin import Behaviour, BuiltinExecutor
from ulos_py.ports import Executor, TimeoutPolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BuiltinSpec(_Strict):
    kind: Literal["builtin"]
    behaviour: Behaviour
    delay_seconds: Annotated[float, Field(ge=0)] = 0.0
    on_timeout: TimeoutPolicy = TimeoutPolicy.CRASH


class RouteSpec(_Strict):
    stage: Annotated[str, Field(min_length=1)]
    executor: str


class RegistryFile(_Strict):
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
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
        spec = RegistryFile.model_validate(raw)
    except OSError as exc:
        raise ConfigError(f"cannot read executor registry {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"executor registry {path} is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"executor registry {path}: {where}: {first['msg']}") from exc
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
