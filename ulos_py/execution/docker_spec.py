"""A docker executor's settings: the `executor.toml` in its folder, checked strictly.

The sandbox is on by default and each part can be loosened per executor, because a lab
running students' code must opt out of safety knowingly, never by forgetting a key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated

from pydantic import Field, field_validator

from ulos_py.errors import ConfigError
from ulos_py.ports import TimeoutPolicy
from ulos_py.tomlfile import StrictFile, load_toml

SETTINGS_FILE = "executor.toml"
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmg]?)b?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """Bytes in a size like `256m`, `1g`, `512k` or `1048576` (Docker's own notation)."""
    match = _SIZE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size like 256m, 1g or 1048576")
    return int(float(match[1]) * _UNITS[match[2].lower()])


class Limits(StrictFile):
    """The sandbox; every default is the safe choice."""

    memory: str = "256m"
    cpus: Annotated[float, Field(gt=0)] = 1.0
    pids: Annotated[int, Field(ge=16)] = 128
    network: bool = False
    user: str = "10001:10001"
    drop_capabilities: bool = True
    no_new_privileges: bool = True
    output_limit: str = "1m"

    @field_validator("memory", "output_limit")
    @classmethod
    def _is_size(cls, value: str) -> str:
        if parse_size(value) < 1 << 20:
            raise ValueError(f"{value!r} is under 1 MiB")
        return value

    @field_validator("user")
    @classmethod
    def _numeric_user(cls, value: str) -> str:
        # Files are handed to the container owned by this uid:gid, so it must be numeric.
        if not re.fullmatch(r"\d+:\d+", value):
            raise ValueError(f"{value!r} must be numeric uid:gid, e.g. 10001:10001")
        return value

    @property
    def uid_gid(self) -> tuple[int, int]:
        uid, gid = self.user.split(":")
        return int(uid), int(gid)


class DockerSettings(StrictFile):
    image: Annotated[str, Field(min_length=1)]
    base: str | None = None
    """A docker executor of the registry whose image this one builds on (`BASE_IMAGE`)."""
    mount: str = "/task"
    command: list[str] | None = None
    success: str = "exit-code"
    on_timeout: TimeoutPolicy = TimeoutPolicy.CRASH
    environment: dict[str, str] = Field(default_factory=dict)
    limits: Limits = Field(default_factory=Limits)

    @field_validator("mount")
    @classmethod
    def _absolute_mount(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute() or len(path.parts) < 2 or ".." in path.parts:
            raise ValueError(f"{value!r} must be an absolute directory other than /")
        return str(path)

    @field_validator("success")
    @classmethod
    def _known_rule(cls, value: str) -> str:
        SuccessRule.parse(value)
        return value


@dataclass(frozen=True)
class SuccessRule:
    """`exit-code` (0 is PASS) or `marker:<relative path>` (PASS iff the file exists)."""

    marker: PurePosixPath | None = None

    @classmethod
    def parse(cls, text: str) -> SuccessRule:
        if text == "exit-code":
            return cls()
        prefix, _, path = text.partition(":")
        marker = PurePosixPath(path)
        if prefix != "marker" or not path or marker.is_absolute() or ".." in marker.parts:
            raise ValueError(f"{text!r} is not 'exit-code' or 'marker:<relative path>'")
        return cls(marker)

    def describe(self) -> str:
        return "exit-code" if self.marker is None else f"marker:{self.marker}"


@dataclass(frozen=True)
class DockerExecutorSpec:
    """A docker executor as the node runs it: its folder plus checked settings."""

    name: str
    folder: Path
    settings: DockerSettings

    @property
    def rule(self) -> SuccessRule:
        return SuccessRule.parse(self.settings.success)


def load_docker_spec(name: str, folder: Path) -> DockerExecutorSpec:
    if not (folder / "Dockerfile").is_file():
        raise ConfigError(f"docker executor {name!r}: no Dockerfile in {folder}")
    settings = load_toml(folder / SETTINGS_FILE, DockerSettings, f"executor {name!r} settings")
    return DockerExecutorSpec(name, folder, settings)
