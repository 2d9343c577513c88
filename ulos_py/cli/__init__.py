"""The `ulos-py` console script: one module per operator command."""

from __future__ import annotations

import click

from ulos_py import __version__
from ulos_py.cli.executors import executors
from ulos_py.cli.node import node
from ulos_py.cli.publish import publish
from ulos_py.cli.schema import schema
from ulos_py.cli.status import status
from ulos_py.cli.storage import storage
from ulos_py.cli.topology import topology
from ulos_py.cli.tracker import tracker
from ulos_py.cli.validate import validate
from ulos_py.cli.watch import watch


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ulos-py")
def cli() -> None:
    """ulos-py: processing nodes for multistage lab workflows over RabbitMQ and FTP."""


cli.add_command(executors)
cli.add_command(node)
cli.add_command(publish)
cli.add_command(schema)
cli.add_command(status)
cli.add_command(storage)
cli.add_command(topology)
cli.add_command(tracker)
cli.add_command(validate)
cli.add_command(watch)


def main() -> None:
    cli()
