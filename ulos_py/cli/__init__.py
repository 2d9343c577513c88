"""The `ulos-py` console script: one module per operator command."""

from __future__ import annotations

import click

from ulos_py import __version__
from ulos_py.cli.node import node
from ulos_py.cli.validate import validate


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ulos-py")
def cli() -> None:
    """ulos-py: processing nodes for multistage lab workflows over RabbitMQ and FTP."""


cli.add_command(node)
cli.add_command(validate)


def main() -> None:
    cli()
