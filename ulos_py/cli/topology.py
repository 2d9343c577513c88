"""`ulos-py topology`: declare the exchanges, queues and bindings a deployment needs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ulos_py.adapters import rabbitmq, rabbitmq_tooling
from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.errors import UlosError
from ulos_py.settings import ConnectionSettings, load
from ulos_py.topology import Topology, describe, load_topology

topology_file = click.argument("file", type=click.Path(path_type=Path))


@click.group()
def topology() -> None:
    """Declare or show a broker topology file (see testing-configurations/topology.toml)."""


@topology.command()
@topology_file
def show(file: Path) -> None:
    """Print what FILE declares, without touching the broker."""
    try:
        spec = load_topology(file)
    except UlosError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in describe(spec):
        click.echo(line)


@topology.command()
@topology_file
@env_file_option
@one_line_errors
def apply(file: Path, env_file: Path | None) -> None:
    """Declare everything in FILE on the broker (MESSAGE_BROKER_* variables).

    Safe to run again: existing declarations with the same settings are left as they are.
    A declaration that conflicts with an existing one is reported, not changed.
    """
    spec = load_topology(file)
    settings = load(ConnectionSettings, env_file)
    asyncio.run(_apply(settings, spec))
    click.echo(f"declared {len(spec.exchange)} exchanges and {len(spec.queue)} queues")


async def _apply(settings: ConnectionSettings, spec: Topology) -> None:
    connection = await rabbitmq.connect(rabbitmq.BrokerAddress.of(settings, "ulos-py topology"))
    try:
        await rabbitmq_tooling.declare_topology(connection, spec)
    finally:
        await connection.close()
