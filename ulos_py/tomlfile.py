"""Operator-written TOML files checked against a pydantic model, with one-line errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ulos_py.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


class StrictFile(BaseModel):
    """Base of file models: an unknown key is a typo, so it is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def load_toml(path: Path, model: type[M], what: str) -> M:
    """`path` parsed into `model`; any problem becomes a ConfigError naming file and key."""
    try:
        return model.model_validate(tomllib.loads(path.read_text(encoding="utf-8")))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid TOML: {exc}") from exc
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{what} {path}: {where}: {first['msg']}") from exc
