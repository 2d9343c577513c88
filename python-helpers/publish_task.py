#!/usr/bin/env python3
"""Publish a task to the first stage of its routing tree.

Either load a task message (a JSON file, or - for stdin) or build one from the options;
options given with a file override its fields. The task goes to the exchange and routing
key of the routing tree's root, confirmed by the broker and mandatory: if no queue is
bound there, this is an error, not a silently dropped task.

  publish_task.py task.json
  publish_task.py testing-messages/pass.json --task-id sub-2032 --file-path /lab3/sub-2032.zip
  publish_task.py --task-id sub-2033 --owner student-88 --file-path /lab3/sub-2033.zip \\
      --exchange processing-exchange --stage pass --on-success lab.passed --on-failure lab.failed

The broker is the one the nodes use: MESSAGE_BROKER_HOST, _PORT, _USERNAME, _PASSWORD
(the options below override them). MESSAGE_BROKER_HOST may list the brokers of one
cluster (`host[:port],...`): the first that answers takes the task.

Needs only the standard library and aio-pika (pip install aio-pika).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import aio_pika
from aio_pika.connection import make_url
from aio_pika.exceptions import (
    AMQPConnectionError,
    ChannelNotFoundEntity,
    DeliveryError,
    ProbableAuthenticationError,
    PublishError,
)


class Failed(Exception):
    """A problem to report in one line, without a traceback."""


def number(text: str) -> int | float:
    value = float(text)
    return int(value) if value.is_integer() else value


def load_message(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        message = json.loads(text)
    except OSError as exc:
        raise Failed(f"cannot read {path}: {exc.strerror or exc}") from exc
    except json.JSONDecodeError as exc:
        raise Failed(f"{path} is not JSON: {exc}") from exc
    if not isinstance(message, dict):
        raise Failed(f"{path}: a task message is a JSON object")
    return message


def build_message(args: argparse.Namespace) -> dict[str, Any]:
    """The loaded message (or a new one) with every given option applied."""
    message = load_message(args.message) if args.message else {}
    given = {
        "taskId": args.task_id,
        "taskOwnerId": args.owner,
        "filePath": args.file_path,
        "timeout": args.timeout,
    }
    message.update({field: value for field, value in given.items() if value is not None})
    if not args.message:
        message.setdefault("taskOwnerId", "")
        message.setdefault("timeout", 60)
    if args.stage is not None:
        # A one-stage tree; for longer chains write the routingTree in a file.
        tree: dict[str, Any] = {"exchange": args.exchange, "routingKey": args.stage}
        if args.on_success:
            tree["successRoutingDecision"] = {
                "exchange": args.exchange,
                "routingKey": args.on_success,
            }
        if args.on_failure:
            tree["failureRoutingDecision"] = {
                "exchange": args.exchange,
                "routingKey": args.on_failure,
            }
        message["routingTree"] = tree
    return message


def check(message: dict[str, Any]) -> None:
    """The basic rules of the task format, so a typo fails here and not as a crash notice."""
    if not isinstance(message.get("taskId"), str) or not message["taskId"]:
        raise Failed("taskId must be a non-empty string (--task-id)")
    if not isinstance(message.get("taskOwnerId"), str):
        raise Failed("taskOwnerId must be a string (--owner)")
    path = message.get("filePath")
    if not isinstance(path, str) or not path.startswith("/") or ".." in path.split("/"):
        raise Failed("filePath must be an absolute path without '..' (--file-path)")
    timeout = message.get("timeout")
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout < 0:
        raise Failed("timeout must be a number of seconds >= 0 (--timeout)")
    root = message.get("routingTree")
    if not isinstance(root, dict) or not all(
        isinstance(root.get(key), str) for key in ("exchange", "routingKey")
    ):
        raise Failed("routingTree needs an exchange and a routingKey (--exchange, --stage)")


def broker_urls(args: argparse.Namespace) -> list[Any]:
    """MESSAGE_BROKER_HOST (--host) may list the brokers of one RabbitMQ cluster,
    `host[:port],...`; a host without a port gets --port. Their URLs, in that order."""
    urls = []
    for entry in (part.strip() for part in args.host.split(",")):
        host, _, port = entry.rpartition(":") if entry.count(":") == 1 else ("", "", "")
        urls.append(
            make_url(
                host=host or entry,
                port=int(port or args.port),
                login=args.username,
                password=args.password,
            )
        )
    return urls


async def connect_any(urls: list[Any]) -> aio_pika.abc.AbstractConnection:
    """The first broker of the list that answers (the last one's failure if none does)."""
    for url in urls[:-1]:
        try:
            return await connect(url)
        except (OSError, AMQPConnectionError, TimeoutError):
            continue  # the next broker of the cluster
    return await connect(urls[-1])


async def connect(url: Any) -> aio_pika.abc.AbstractConnection:
    return await aio_pika.connect(
        url,
        timeout=10,
        client_properties={"connection_name": f"publish_task.py pid {os.getpid()}"},
    )


async def publish(args: argparse.Namespace, message: dict[str, Any]) -> None:
    root = message["routingTree"]
    where = f"exchange {root['exchange']!r} with routing key {root['routingKey']!r}"
    # A plain connection (not connect_robust): this script sends one message and exits, so
    # a lost connection should be an error for the caller to see, not a silent retry.
    connection = await connect_any(broker_urls(args))
    async with connection:
        # publisher_confirms: publish() returns only once the broker has taken the message
        # (written it to disk, for a persistent message in a durable queue).
        # on_return_raises: with mandatory=True the broker sends back a message that no
        # queue would receive, and aio-pika turns that into a PublishError.
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            # "" is the default exchange, where the routing key is a queue name. Any other
            # exchange is looked up first (a passive declare): publishing to a missing one
            # would close the channel with a less helpful error.
            exchange = (
                channel.default_exchange
                if root["exchange"] == ""
                else await channel.get_exchange(root["exchange"])
            )
        except ChannelNotFoundEntity as exc:
            raise Failed(f"not sent: {where}: the exchange does not exist") from exc
        body = aio_pika.Message(
            json.dumps(message, ensure_ascii=False).encode(),
            content_type="application/json",
            content_encoding="utf-8",
            # Persistent: the task survives a broker restart in a durable queue.
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            # The nodes keep correlation_id = taskId on every forward, so a backend can
            # match anything that comes back to the task it sent.
            correlation_id=message["taskId"],
            priority=args.priority,
        )
        try:
            await exchange.publish(body, root["routingKey"], mandatory=True, timeout=30)
        except PublishError as exc:
            raise Failed(f"not sent: {where}: unroutable, no queue is bound to it") from exc
        except DeliveryError as exc:
            raise Failed(f"not sent: {where}: the broker refused the message") from exc
        except TimeoutError as exc:
            raise Failed(f"not confirmed: {where}: the broker did not answer in 30 s") from exc
    print(f"sent task {message['taskId']} to {where} (confirmed by the broker)")


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("message", nargs="?", help="a task message JSON file, or - for stdin")
    task = parser.add_argument_group("the task (each overrides the file's field)")
    task.add_argument("--task-id", help="taskId: your system's id of this task")
    task.add_argument("--owner", help="taskOwnerId: whose work it is (default: empty)")
    task.add_argument("--file-path", help="filePath: absolute FTP path of the submission zip")
    task.add_argument("--timeout", type=number, help="seconds each execution may take (60)")
    task.add_argument("--priority", type=int, help="AMQP priority 0-10; nodes keep it")
    tree = parser.add_argument_group("a one-stage routing tree (replaces the file's)")
    tree.add_argument("--exchange", help="exchange of the stage and of its branches")
    tree.add_argument("--stage", metavar="KEY", help="routing key of the stage")
    tree.add_argument("--on-success", metavar="KEY", help="where the task goes on PASS")
    tree.add_argument("--on-failure", metavar="KEY", help="where the task goes on FAIL")
    broker = parser.add_argument_group("broker (defaults: the MESSAGE_BROKER_* variables)")
    broker.add_argument("--host", default=env("MESSAGE_BROKER_HOST", "localhost"))
    broker.add_argument("--port", type=int, default=env("MESSAGE_BROKER_PORT", "5672"))
    broker.add_argument("--username", default=env("MESSAGE_BROKER_USERNAME", "guest"))
    broker.add_argument("--password", default=env("MESSAGE_BROKER_PASSWORD", "guest"))
    args = parser.parse_args()
    if args.message is None and args.stage is None:
        parser.error("give a message file, or build one with --stage (and --task-id ...)")
    if args.stage is not None and args.exchange is None:
        parser.error("--stage needs --exchange")
    return args


def main() -> int:
    args = parse_args()
    # aiormq logs a failed connection attempt itself; it is reported below in one line.
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    listed = ", ".join(f"{url.host}:{url.port}" for url in broker_urls(args))
    broker = f"the broker at {listed}"
    try:
        message = build_message(args)
        check(message)
        asyncio.run(publish(args, message))
    except Failed as exc:
        print(f"publish_task: {exc}", file=sys.stderr)
        return 1
    except ProbableAuthenticationError:
        print(f"publish_task: {broker} refused user {args.username!r}", file=sys.stderr)
        return 1
    except (OSError, AMQPConnectionError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        print(f"publish_task: cannot reach {broker}: {reason}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
