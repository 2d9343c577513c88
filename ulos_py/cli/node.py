"""`ulos-py node`: run one processing node until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from ulos_py.errors import ConfigError
from ulos_py.log import configure_logging
from ulos_py.node import install_signal_handlers, run_node
from ulos_py.settings import Settings, load_settings


@click.command()
@click.option(
    "--env-file",
    type=click.Path(path_type=Path),
    help="Shell file of `export NAME=value` lines; the environment overrides it.",
)
def node(env_file: Path | None) -> None:
    """Consume tasks from MESSAGE_BROKER_CONSUMPTION_QUEUE until SIGTERM/SIGINT.

    Every setting is an environment variable (see the README). On SIGTERM/SIGINT the node
    stops taking tasks, lets running ones finish within ULOS_SHUTDOWN_GRACE seconds and
    hands the rest back to the queue.
    """
    try:
        settings = load_settings(env_file)
    except ConfigError as exc:
        click.echo(f"ulos-py node: configuration error: {exc}", err=True)
        sys.exit(2)
    configure_logging(settings.log_format, settings.log_level)
    try:
        asyncio.run(_main(settings))
    except ConfigError as exc:
        click.echo(f"ulos-py node: {exc}", err=True)
        sys.exit(2)


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await run_node(settings, stop)
