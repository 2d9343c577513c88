"""`ulos-py tracker`: store every task's journey from the notices and serve it over HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.log import configure_logging
from ulos_py.node import install_signal_handlers, run_event_loop
from ulos_py.settings import load

if TYPE_CHECKING:
    from ulos_py.tracker.settings import TrackerSettings


@click.command()
@env_file_option
@one_line_errors
def tracker(env_file: Path | None) -> None:
    """Consume log and crash notices from ULOS_TRACKER_QUEUE, store every task's journey in
    ULOS_TRACKER_DATABASE (a SQLite file by default, or postgresql://…) and serve the API on
    ULOS_TRACKER_HOST:ULOS_TRACKER_PORT (127.0.0.1:8400), with its description at /docs.

    Needs the `tracker` extra (pip install 'ulos-py[tracker]'). A notice is acked only once
    it is stored, so a stopped tracker catches up from its queue when started again.
    """
    try:  # a node's install has no web stack: the CLI must load without it
        from ulos_py.tracker.service import run_tracker
        from ulos_py.tracker.settings import TrackerSettings
    except ImportError as exc:
        raise click.ClickException(
            f"the tracker needs its extra: pip install 'ulos-py[tracker]' ({exc.name} is missing)"
        ) from exc
    settings = load(TrackerSettings, env_file)
    configure_logging(settings.log_format, settings.log_level)
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).addHandler(logging.NullHandler())
    run_event_loop(_main(run_tracker, settings), settings)


async def _main(
    run: Callable[[TrackerSettings, asyncio.Event], Awaitable[None]], settings: TrackerSettings
) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    await run(settings, stop)
