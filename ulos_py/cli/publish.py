"""`ulos-py publish`: send task message files to their first stage."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import click

from ulos_py.adapters import rabbitmq
from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.errors import ConfigError, MalformedTask, PublishError
from ulos_py.models import parse_task
from ulos_py.ports import Envelope
from ulos_py.settings import ConnectionSettings, load


def _envelope(path: Path, validate: bool, exchange: str | None, key: str | None) -> Envelope:
    body = path.read_bytes()
    try:
        received, task = parse_task(body)
    except MalformedTask as exc:
        if validate:
            raise ConfigError(f"{path}: {exc.detail}") from exc
        received, task = json.loads(body), None
    root = task.routing_tree if task else None
    target_exchange = exchange if exchange is not None else (root.exchange if root else None)
    target_key = key if key is not None else (root.routing_key if root else None)
    if target_exchange is None or target_key is None:
        raise ConfigError(f"{path}: no routing tree; give --exchange and --routing-key")
    task_id = received.get("taskId")
    return Envelope(
        target_exchange,
        target_key,
        received,
        correlation_id=task_id if isinstance(task_id, str) else None,
    )


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--validate/--no-validate",
    default=True,
    show_default=True,
    help="Refuse files that break the task format (--no-validate sends them anyway, "
    "e.g. to test a node's handling of bad input).",
)
@click.option("--exchange", help="Send here instead of the routing tree's root exchange.")
@click.option("--routing-key", help="Send with this key instead of the root's routing key.")
@env_file_option
@one_line_errors
def publish(
    files: tuple[Path, ...],
    validate: bool,
    exchange: str | None,
    routing_key: str | None,
    env_file: Path | None,
) -> None:
    """Send each task message FILE to the exchange and routing key of its current stage.

    Publishing is confirmed and mandatory: a message no queue would receive is an error.
    """
    envelopes = [(path, _envelope(path, validate, exchange, routing_key)) for path in files]
    settings = load(ConnectionSettings, env_file)
    asyncio.run(_send(settings, envelopes))


async def _send(settings: ConnectionSettings, envelopes: list[tuple[Path, Envelope]]) -> None:
    connection = await rabbitmq.connect(rabbitmq.BrokerAddress.of(settings, "ulos-py publish"))
    failed = 0
    try:
        publisher = await rabbitmq.RabbitPublisher.open(connection)
        for path, envelope in envelopes:
            try:
                await publisher.publish(envelope)
            except PublishError as exc:
                failed += 1
                click.echo(f"{path}: not sent: {exc}", err=True)
            else:
                click.echo(f"{path}: sent to {envelope.exchange!r} / {envelope.routing_key!r}")
    finally:
        await connection.close()
    if failed:
        raise PublishError(f"{failed} of {len(envelopes)} messages were not sent")
