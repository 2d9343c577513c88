"""`ulos-py node`: run one processing node until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
from pathlib import Path

import click

from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.log import configure_logging
from ulos_py.node import install_signal_handlers, run_node
from ulos_py.settings import Settings, load_settings


@click.command()
@env_file_option
@one_line_errors
def node(env_file: Path | None) -> None:
    """Consume tasks from MESSAGE_BROKER_CONSUMPTION_QUEUE until SIGTERM/SIGINT.

    Every setting is an environment variable (see the README). On SIGTERM/SIGINT the node
    stops taking tasks, lets running ones finish within ULOS_SHUTDOWN_GRACE seconds and
    hands the rest back to the queue.
    """
    settings = load_settings(env_file)
    configure_logging(settings.log_format, settings.log_level)
    asyncio.run(_main(settings))


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await run_node(settings, stop)
