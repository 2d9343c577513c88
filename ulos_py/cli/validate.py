"""`ulos-py validate`: check message files against the task format before sending them."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ulos_py.errors import MalformedTask
from ulos_py.models import parse_task


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
def validate(files: tuple[Path, ...]) -> None:
    """Report every problem of each task message FILE, with its JSON path.

    Exits 1 when any file is invalid.
    """
    bad = 0
    for path in files:
        try:
            parse_task(path.read_bytes())
        except OSError as exc:
            click.echo(f"{path}: cannot read: {exc.strerror}")
            bad += 1
        except MalformedTask as exc:
            bad += 1
            click.echo(f"{path}: invalid")
            for error in exc.errors or [{"path": "$", "message": exc.detail}]:
                click.echo(f"  {error['path']}: {error['message']}")
        else:
            click.echo(f"{path}: ok")
    sys.exit(1 if bad else 0)
