"""`ulos-py publish`: send task message files to their first stage, or N copies for load."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from ulos_py.adapters import rabbitmq
from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.errors import ConfigError, MalformedTask, PublishError
from ulos_py.models import parse_task
from ulos_py.ports import Envelope
from ulos_py.settings import ConnectionSettings, load

IN_FLIGHT = 64
"""Copies awaiting their confirms together: enough to hide the round trip, bounded memory."""
PLACEHOLDER = "{n}"


def _envelope(
    path: Path, body: bytes, validate: bool, exchange: str | None, key: str | None
) -> Envelope:
    try:
        received, task = parse_task(body)
    except MalformedTask as exc:
        if validate:
            raise ConfigError(f"{path}: {exc.detail}") from exc
        try:
            received, task = json.loads(body), None
        except ValueError:
            received, task = {"rawBody": body.decode("utf-8", "replace")}, None
    root = task.routing_tree if task else None
    target_exchange = exchange if exchange is not None else (root.exchange if root else None)
    target_key = key if key is not None else (root.routing_key if root else None)
    if target_exchange is None or target_key is None:
        raise ConfigError(f"{path}: no routing tree; give --exchange and --routing-key")
    task_id = received.get("taskId") if isinstance(received, dict) else None
    return Envelope(
        target_exchange,
        target_key,
        received,
        correlation_id=task_id if isinstance(task_id, str) else None,
    )


def copies(envelope: Envelope, count: int) -> Iterator[Envelope]:
    """`count` copies for a load test: `{n}` in taskId or filePath becomes 1..count.

    A taskId without `{n}` gets `-<n>` appended, since task ids must differ; a filePath
    without it stays, so every copy reads the same uploaded zip.
    """
    width = len(str(count))
    for n in range(1, count + 1):
        number = str(n).zfill(width)
        body: dict[str, Any] = dict(envelope.body)
        task_id = str(body.get("taskId", "task"))
        body["taskId"] = (
            task_id.replace(PLACEHOLDER, number)
            if PLACEHOLDER in task_id
            else f"{task_id}-{number}"
        )
        if isinstance(body.get("filePath"), str):
            body["filePath"] = body["filePath"].replace(PLACEHOLDER, number)
        yield Envelope(envelope.exchange, envelope.routing_key, body, correlation_id=body["taskId"])


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
@click.option(
    "--count",
    type=click.IntRange(min=1),
    help="Send N copies of each FILE (load tests): '{n}' in taskId or filePath becomes the "
    "copy's number; a taskId without it gets '-<n>' appended.",
)
@env_file_option
@one_line_errors
def publish(
    files: tuple[Path, ...],
    validate: bool,
    exchange: str | None,
    routing_key: str | None,
    count: int | None,
    env_file: Path | None,
) -> None:
    """Send each task message FILE to the exchange and routing key of its current stage.

    Publishing is confirmed and mandatory: a message no queue would receive is an error.
    """
    envelopes = [
        (path, _envelope(path, path.read_bytes(), validate, exchange, routing_key))
        for path in files
    ]
    settings = load(ConnectionSettings, env_file)
    if count is None:
        asyncio.run(_send(settings, envelopes))
    else:
        asyncio.run(_send_copies(settings, envelopes, count))


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


async def _send_copies(
    settings: ConnectionSettings, envelopes: list[tuple[Path, Envelope]], count: int
) -> None:
    connection = await rabbitmq.connect(rabbitmq.BrokerAddress.of(settings, "ulos-py publish"))
    total = count * len(envelopes)
    errors: list[str] = []
    stderr = sys.stderr
    try:
        publisher = await rabbitmq.RabbitPublisher.open(connection)

        async def send(envelope: Envelope) -> None:
            try:
                await publisher.publish(envelope)
            except PublishError as exc:
                errors.append(f"{envelope.body.get('taskId')}: {exc}")

        with click.progressbar(length=total, label="publishing", file=stderr) as bar:
            batch: list[Envelope] = []
            for _, envelope in envelopes:
                for copy in copies(envelope, count):
                    batch.append(copy)
                    if len(batch) == IN_FLIGHT:
                        await asyncio.gather(*(send(e) for e in batch))
                        bar.update(len(batch))
                        batch.clear()
            await asyncio.gather(*(send(e) for e in batch))
            bar.update(len(batch))
    finally:
        await connection.close()
    for error in errors[:5]:
        click.echo(f"not sent: {error}", err=True)
    if errors:
        raise PublishError(f"{len(errors)} of {total} messages were not sent")
    click.echo(f"sent {total} messages")
