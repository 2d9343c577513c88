"""`ulos-py cancel`: stop tasks wherever they are (SPEC §8).

The command only publishes: one confirmed message per task to the cancellation exchange,
which every running node hears and whose stream nodes that start later read. It cannot
know whether a task exists or has finished, and need not: cancelling an unknown or
finished task, or one twice, does no harm.
"""

from __future__ import annotations

import asyncio
import getpass
import socket
from pathlib import Path

import click

from ulos_py.adapters import rabbitmq
from ulos_py.adapters.cancellations import publish_cancellation
from ulos_py.cancellation import TEXT_LIMIT, Cancellation
from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.errors import ConfigError, PublishError
from ulos_py.settings import CancelSettings, load


def operator_name() -> str:
    """Who cancels from this terminal: user@host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no name for this uid (a bare container)
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@click.command()
@click.argument("task_ids", metavar="TASK_ID...", nargs=-1, required=True)
@click.option(
    "--reason", default="", help=f"Why, for the crash notice (at most {TEXT_LIMIT} characters)."
)
@click.option(
    "--by",
    default=None,
    help="Who cancels, for the crash notice (default: your user@host).",
)
@env_file_option
@one_line_errors
def cancel(task_ids: tuple[str, ...], reason: str, by: str | None, env_file: Path | None) -> None:
    """Cancel each TASK_ID wherever it is: running, waiting in a queue, or not yet seen.

    A node running it kills its container and ends it with a crash notice of kind
    `cancelled` (naming who and why); a node that receives it later drops it without
    downloading it. Cancels are kept for ULOS_CANCEL_RETENTION (a day by default).
    """
    settings = load(CancelSettings, env_file)
    who = by or operator_name()
    wanted = [Cancellation.now(task_id, who, reason) for task_id in dict.fromkeys(task_ids)]
    asyncio.run(_send(settings, wanted))


async def _send(settings: CancelSettings, wanted: list[Cancellation]) -> None:
    connection = await rabbitmq.connect(rabbitmq.BrokerAddress.of(settings, "ulos-py cancel"))
    failed = 0
    try:
        publisher = await rabbitmq.RabbitPublisher.open(connection)
        if not await publisher.exchange_exists(settings.cancel_exchange):
            raise ConfigError(
                f"ULOS_CANCEL_EXCHANGE: exchange {settings.cancel_exchange!r} does not exist on "
                "the broker (declare it first, e.g. with `ulos-py topology apply`)"
            )
        for cancellation in wanted:
            try:
                await publish_cancellation(publisher, settings.cancel_exchange, cancellation)
            except PublishError as exc:
                failed += 1
                click.echo(f"{cancellation.task_id}: not cancelled: {exc}", err=True)
            else:
                click.echo(f"{cancellation.task_id}: cancel sent")
    finally:
        await connection.close()
    if failed:
        raise PublishError(f"{failed} of {len(wanted)} cancels were not sent")
