"""What every operator command shares: the --env-file option and one-line errors."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

import click

from ulos_py.errors import ConfigError, UlosError

P = ParamSpec("P")
R = TypeVar("R")

env_file_option = click.option(
    "--env-file",
    type=click.Path(path_type=Path),
    help="Shell file of `export NAME=value` lines; the environment overrides it.",
)


def one_line_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Operators get one clear line and an exit status, never a traceback, for our errors.

    Exit status 2 means bad configuration or input, 1 means the operation failed.
    """

    @functools.wraps(command)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        name = click.get_current_context().command_path
        try:
            return command(*args, **kwargs)
        except ConfigError as exc:
            click.echo(f"{name}: configuration error: {exc}", err=True)
            sys.exit(2)
        except (UlosError, OSError) as exc:
            click.echo(f"{name}: {exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo(f"{name}: interrupted", err=True)
            sys.exit(130)

    return wrapper
