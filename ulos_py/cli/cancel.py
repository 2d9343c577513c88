"""`ulos-py cancel`: stop tasks wherever they are (SPEC §8).

The command only publishes: confirmed messages of up to a thousand task ids each to the
cancellation exchange, which every running node hears and whose stream nodes that start
later read. It cannot
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
from ulos_py.adapters.cancellations import publish_cancellations
from ulos_py.cancellation import BATCH_LIMIT, TEXT_LIMIT, Cancellation
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
    made = Cancellation.now("-", who, reason)  # one moment, one who and why for all of them
    wanted = [
        Cancellation(task_id, made.by, made.reason, made.at) for task_id in dict.fromkeys(task_ids)
    ]
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
        for start in range(0, len(wanted), BATCH_LIMIT):  # one message per batch
            batch = wanted[start : start + BATCH_LIMIT]
            try:
                await publish_cancellations(publisher, settings.cancel_exchange, batch)
            except PublishError as exc:
                failed += len(batch)
                for cancellation in batch:
                    click.echo(f"{cancellation.task_id}: not cancelled: {exc}", err=True)
            else:
                for cancellation in batch:
                    click.echo(f"{cancellation.task_id}: cancel sent")
    finally:
        await connection.close()
    if failed:
        raise PublishError(f"{failed} of {len(wanted)} cancels were not sent")
