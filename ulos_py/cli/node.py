"""`ulos-py node`: run one processing node (one or several worker processes) until SIGTERM
or SIGINT."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click
import structlog

from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.log import configure_logging
from ulos_py.node import install_signal_handlers, run_event_loop, run_node
from ulos_py.settings import Settings, load_settings
from ulos_py.supervisor import run_supervised


@click.command()
@env_file_option
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    help="Worker processes consuming the queue (overrides ULOS_PROCESSES; default: the "
    "number of usable cores). Each has its own connections and prefetch.",
)
@one_line_errors
def node(env_file: Path | None, processes: int | None) -> None:
    """Consume tasks from MESSAGE_BROKER_CONSUMPTION_QUEUE until SIGTERM/SIGINT.

    Every setting is an environment variable (see the README). On SIGTERM/SIGINT the node
    stops taking tasks, lets running ones finish within ULOS_SHUTDOWN_GRACE seconds and
    hands the rest back to the queue. With several processes, a worker that dies is
    replaced and the broker hands its unfinished tasks to the others.
    """
    settings = load_settings(env_file)
    if processes is not None:
        settings = settings.model_copy(update={"processes": processes})
    configure_logging(settings.log_format, settings.log_level)
    if settings.processes > 1:
        sys.exit(run_supervised(settings))
    structlog.contextvars.bind_contextvars(node_id=settings.node_id)
    run_event_loop(_main(settings), settings)


async def _main(settings: Settings) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await run_node(settings, stop)
