"""Typed node settings from the SPEC §6 environment variables, every default in one place.

Operators' existing files use exactly the MESSAGE_BROKER_* and REMOTE_STORAGE_* names; what
ulos-py adds is prefixed ULOS_. Variables in the environment win over an --env-file, so a
one-off override needs no edited file.
"""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from ulos_py.errors import ConfigError

PositiveInt = Annotated[int, Field(ge=1)]
Port = Annotated[int, Field(ge=1, le=65535)]


class ConnectionSettings(BaseSettings):
    """Where the broker and the storage are: all that the operator commands need."""

    model_config = SettingsConfigDict(
        case_sensitive=True, extra="ignore", frozen=True, populate_by_name=True
    )

    broker_host: str = Field("localhost", alias="MESSAGE_BROKER_HOST")
    broker_port: Port = Field(5672, alias="MESSAGE_BROKER_PORT")
    broker_username: str = Field("guest", alias="MESSAGE_BROKER_USERNAME")
    broker_password: SecretStr = Field(SecretStr("guest"), alias="MESSAGE_BROKER_PASSWORD")
    storage_host: str = Field("localhost", alias="REMOTE_STORAGE_HOST")
    storage_port: Port = Field(21, alias="REMOTE_STORAGE_PORT")
    storage_username: str = Field("anonymous", alias="REMOTE_STORAGE_USERNAME")
    storage_password: SecretStr = Field(SecretStr(""), alias="REMOTE_STORAGE_PASSWORD")


def usable_cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class Settings(ConnectionSettings):
    """Everything a node reads at start; a bad value stops it with one line."""

    logs_exchange: str = Field(alias="MESSAGE_BROKER_LOGS_EXCHANGE")
    logs_routing_key: str = Field(alias="MESSAGE_BROKER_LOGS_ROUTING_KEY")
    crash_exchange: str = Field(alias="MESSAGE_BROKER_CRASH_EXCHANGE")
    crash_routing_key: str = Field(alias="MESSAGE_BROKER_CRASH_ROUTING_KEY")
    consumption_queue: Annotated[str, Field(min_length=1)] = Field(
        alias="MESSAGE_BROKER_CONSUMPTION_QUEUE"
    )
    prefetch_count: Annotated[int, Field(ge=0, le=65535)] = Field(
        10, alias="MESSAGE_BROKER_PREFETCH_COUNT"
    )
    requeue_on_reject: bool = Field(False, alias="MESSAGE_BROKER_REQUEUE_ON_REJECT")
    max_deliveries: Annotated[int, Field(ge=1)] = Field(5, alias="ULOS_MAX_DELIVERIES")

    configured_node_id: str | None = Field(None, alias="ULOS_NODE_ID")
    processes: PositiveInt = Field(default_factory=usable_cores, alias="ULOS_PROCESSES")
    work_dir: Path = Field(Path(tempfile.gettempdir()) / "ulos-py", alias="ULOS_WORK_DIR")
    max_in_flight: PositiveInt = Field(16, alias="ULOS_MAX_IN_FLIGHT")
    executors_file: Path = Field(Path("executors/registry.toml"), alias="ULOS_EXECUTORS_FILE")
    shutdown_grace: Annotated[float, Field(ge=0)] = Field(30.0, alias="ULOS_SHUTDOWN_GRACE")
    storage_retries: Annotated[int, Field(ge=0)] = Field(3, alias="ULOS_STORAGE_RETRIES")
    storage_retry_delay: Annotated[float, Field(ge=0)] = Field(
        0.5, alias="ULOS_STORAGE_RETRY_DELAY"
    )
    storage_connections: PositiveInt = Field(4, alias="ULOS_STORAGE_CONNECTIONS")
    archive_max_bytes: PositiveInt = Field(1 << 30, alias="ULOS_ARCHIVE_MAX_BYTES")
    archive_max_entries: PositiveInt = Field(10_000, alias="ULOS_ARCHIVE_MAX_ENTRIES")
    log_format: Literal["auto", "console", "json"] = Field("auto", alias="ULOS_LOG_FORMAT")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", alias="ULOS_LOG_LEVEL")

    @property
    def node_id(self) -> str:
        """ULOS_NODE_ID, or queue@host:pid, which stays unique per process.

        A worker of a multi-process node gets `ULOS_NODE_ID/w<index>:<pid>` when one is set.
        """
        host = socket.gethostname()
        return self.configured_node_id or f"{self.consumption_queue}@{host}:{os.getpid()}"

    @property
    def concurrency(self) -> int:
        """Tasks run at once: the prefetch count, or ULOS_MAX_IN_FLIGHT when it is 0."""
        return self.prefetch_count or self.max_in_flight


S = TypeVar("S", bound=ConnectionSettings)


def load_settings(env_file: Path | None = None) -> Settings:
    """The node's settings; ConfigError names the bad variable."""
    return load(Settings, env_file)


def load(kind: type[S], env_file: Path | None = None) -> S:
    """Settings from the environment (and an env file); ConfigError names the bad variable."""
    if env_file is not None and not env_file.is_file():
        raise ConfigError(f"--env-file {env_file}: no such file")
    try:
        return kind(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            name = ".".join(str(part) for part in error["loc"])
            given = "" if error["type"] == "missing" else f" (got {error['input']!r})"
            problems.append(f"{name}: {error['msg']}{given}")
        raise ConfigError("; ".join(problems)) from exc
