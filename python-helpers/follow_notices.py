#!/usr/bin/env python3
"""Follow the nodes' log and crash notices: one line per notice, or the raw JSON.

A queue of this script's own is bound to both exchanges, so it gets a copy of every
notice without taking any from other consumers. By default the queue is exclusive: the
broker deletes it when this script disconnects, and notices sent meanwhile are not kept.
With --queue NAME it is a durable queue that keeps collecting while nobody listens, the
way a backend would follow the notices.

  follow_notices.py                                 # everything, until Ctrl-C
  follow_notices.py --task sub-2031 --until-done    # one task, until its journey ends
  follow_notices.py --json --queue backend-notices  # raw JSON, from a durable queue

--until-done ends once the task has left the pipeline and the node that sent it on has
acknowledged it: it was forwarded to a leaf of its routing tree (like lab.passed in the
samples: a queue your system consumes, not a stage; or name such keys with --end-key),
or its last stage completed, or it crashed. Exit status: 0 when it left the pipeline or
completed, 3 when it crashed, 1 on an error or when --timeout runs out first.

The broker and exchanges are the ones the nodes use: MESSAGE_BROKER_HOST, _PORT,
_USERNAME, _PASSWORD, _LOGS_EXCHANGE, _LOGS_ROUTING_KEY, _CRASH_EXCHANGE,
_CRASH_ROUTING_KEY (the options below override them). MESSAGE_BROKER_HOST may list the
brokers of one cluster (`host[:port],...`): the first that answers is followed, and when
it goes away the next ones are tried in turn.

Needs only the standard library and aio-pika (pip install aio-pika).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from contextlib import suppress
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.connection import make_url
from aio_pika.exceptions import (
    AMQPConnectionError,
    ChannelInvalidStateError,
    ChannelNotFoundEntity,
    ChannelPreconditionFailed,
    ProbableAuthenticationError,
)

CRASHED = 3


class Failed(Exception):
    """A problem to report in one line, without a traceback."""


def one_line(notice: dict[str, Any], from_crash_exchange: bool) -> str:
    stage = notice.get("stage") or {}
    event = notice.get("event", "?")
    text = str(notice.get("logMessage") or "")
    if from_crash_exchange:
        error = notice.get("error") or {}
        event = f"CRASH:{error.get('kind', '?')}"
    elif event == "forwarded":
        target = notice.get("target") or {}
        text = f"to {target.get('exchange')}/{target.get('routingKey')}"
    columns = [
        notice.get("timestamp", "-"),
        notice.get("taskId", "-"),
        stage.get("routingKey", "-"),
        event,
        text.replace("\n", " "),
    ]
    return "  ".join(str(column) for column in columns)


class Journey:
    """Watches one task's notices for the end of its journey (for --until-done)."""

    def __init__(self, end_keys: list[str]) -> None:
        self.end_keys = end_keys
        self.ending: str | None = None  # "left", "completed" or "crashed", once seen
        # A node publishes one delivery's notices concurrently, so they may arrive in any
        # order: the journey is over once one stage has both said that it ends there and
        # been acknowledged or rejected (then the results are all on the FTP server).
        self.ended: set[tuple[str, str]] = set()
        self.settled: set[tuple[str, str]] = set()

    def leaves(self, target: dict[str, Any]) -> bool:
        if self.end_keys:
            return target.get("routingKey") in self.end_keys
        # A leaf: no branch follows it, so it is where results are collected.
        return not target.get("successRoutingDecision") and not target.get("failureRoutingDecision")

    def see(self, notice: dict[str, Any]) -> bool:
        """Take one notice of the task; True once the journey is over and settled."""
        event = notice.get("event")
        stage = notice.get("stage") or {}
        where = (str(stage.get("exchange")), str(stage.get("routingKey")))
        if event in ("crashed", "completed"):
            self.ending = str(event)
            self.ended.add(where)
        elif event == "forwarded" and self.leaves(notice.get("target") or {}):
            self.ending = "left"
            self.ended.add(where)
        elif event in ("acked", "rejected"):
            self.settled.add(where)
        return bool(self.ended & self.settled)


def decode(message: AbstractIncomingMessage) -> dict[str, Any] | None:
    try:
        notice = json.loads(message.body)
    except ValueError:
        return None
    return notice if isinstance(notice, dict) else None


async def handle(
    message: AbstractIncomingMessage, args: argparse.Namespace, journey: Journey
) -> bool:
    """Print the notice if it is one we want; True once --until-done is satisfied."""
    notice = decode(message)
    done = False
    if notice is None:
        print(f"(not a JSON object: {message.body[:200]!r})", file=sys.stderr)
    elif args.task is None or notice.get("taskId") == args.task:
        if args.json:
            print(json.dumps(notice, ensure_ascii=False), flush=True)
        else:
            from_crash = (message.exchange, message.routing_key) == (
                args.crash_exchange,
                args.crash_routing_key,
            )
            print(one_line(notice, from_crash), flush=True)
        done = args.until_done and journey.see(notice)
    # Acknowledge only after handling, so a notice is not lost if this script dies
    # halfway. Notices of other tasks are acknowledged too: they are copies in our own
    # queue, and unacknowledged ones would pile up.
    # If the connection dropped since this delivery, the ack cannot be sent: the broker
    # hands the notice out again after the reconnect (at-least-once), so it may print twice.
    with suppress(AMQPConnectionError, ChannelInvalidStateError):
        await message.ack()
    return done


def on_lost(_: object, reason: BaseException | None) -> None:
    # Our own close passes CancelledError, which is not an Exception: stay quiet then.
    if isinstance(reason, Exception):
        print(f"follow_notices: lost the broker ({reason}); reconnecting", file=sys.stderr)


def on_back(_: object) -> None:
    print("follow_notices: reconnected, following again", file=sys.stderr)


async def follow(args: argparse.Namespace) -> int:
    """Follow until done, or until Ctrl-C / SIGTERM."""
    # asyncio.run turns Ctrl-C into a cancellation, which a consumer being restored after a
    # reconnect can swallow; an explicit stop event always ends the script.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    following = asyncio.ensure_future(_follow(args))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
    if following.done():
        stopping.cancel()
        return following.result()
    following.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await following
    raise KeyboardInterrupt


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


RECONNECT_INTERVAL = 2.0
"""Seconds between attempts while the broker is away."""
ROTATING: set[asyncio.Task[None]] = set()
"""The task that moves a lost connection on to the next broker (kept: asyncio holds weakly)."""


async def connect_robust_any(urls: list[Any]) -> aio_pika.abc.AbstractRobustConnection:
    """A reconnecting connection to the first broker of the list that answers."""
    for url in urls[:-1]:
        try:
            return await connect_robust(url)
        except (OSError, AMQPConnectionError, TimeoutError):
            continue  # the next broker of the cluster
    return await connect_robust(urls[-1])


async def connect_robust(url: Any) -> aio_pika.abc.AbstractRobustConnection:
    return await aio_pika.connect_robust(
        url,
        timeout=10,
        reconnect_interval=RECONNECT_INTERVAL,
        client_properties={"connection_name": f"follow_notices.py pid {os.getpid()}"},
    )


async def rotate_while_down(
    connection: aio_pika.abc.AbstractRobustConnection, urls: list[Any]
) -> None:
    if not isinstance(connection, aio_pika.RobustConnection):  # what connect_robust makes
        return
    turn = urls.index(connection.url) if connection.url in urls else 0
    while len(urls) > 1 and not connection.is_closed:
        await asyncio.sleep(RECONNECT_INTERVAL / 2)
        if not connection.connected.is_set():
            turn = (turn + 1) % len(urls)
            connection.url = urls[turn]
            await asyncio.sleep(RECONNECT_INTERVAL)


async def _follow(args: argparse.Namespace) -> int:
    # connect_robust: if the connection drops, aio-pika reconnects by itself and declares
    # the queue, its bindings and the consumer again, so following goes on.
    urls = broker_urls(args)
    connection = await connect_robust_any(urls)
    connection.close_callbacks.add(on_lost)
    connection.reconnect_callbacks.add(on_back)
    # aio-pika reconnects to the one URL it has: while it is down, point it at the next
    # broker of the cluster before each attempt.
    ROTATING.add(asyncio.create_task(rotate_while_down(connection, urls)))
    async with connection:
        channel = await connection.channel()
        # At most this many notices are on their way to us unacknowledged.
        await channel.set_qos(prefetch_count=100)
        try:
            if args.queue:
                queue = await channel.declare_queue(args.queue, durable=True)
            else:
                # No name: aio-pika picks a random one (and uses it again on reconnect).
                queue = await channel.declare_queue(exclusive=True)
            # Binding is what makes the exchanges copy their notices into our queue.
            await queue.bind(args.logs_exchange, args.logs_routing_key)
            await queue.bind(args.crash_exchange, args.crash_routing_key)
        except ChannelNotFoundEntity as exc:
            raise Failed(f"{exc.args[0] if exc.args else exc} (is the topology declared?)") from exc
        except ChannelPreconditionFailed as exc:
            raise Failed(f"queue {args.queue!r} exists with other settings") from exc
        print(
            f"following {args.logs_exchange}/{args.logs_routing_key} and "
            f"{args.crash_exchange}/{args.crash_routing_key} on queue {queue.name}",
            file=sys.stderr,
            flush=True,
        )
        journey = Journey(args.end_key)
        deadline = asyncio.timeout(args.timeout)
        try:
            async with deadline, queue.iterator() as messages:
                async for message in messages:
                    if await handle(message, args, journey):
                        return CRASHED if journey.ending == "crashed" else 0
        except TimeoutError:
            if not deadline.expired():
                raise
            if args.until_done:
                raise Failed(f"task {args.task} not done after {args.timeout:g} s") from None
    return 0


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--task", metavar="ID", help="only the notices of this taskId")
    parser.add_argument("--json", action="store_true", help="print each notice's JSON")
    parser.add_argument(
        "--until-done", action="store_true", help="exit when the --task's journey ends"
    )
    parser.add_argument(
        "--end-key",
        action="append",
        default=[],
        metavar="KEY",
        help="a routing key outside the pipeline (repeatable; default: the tree's leaves)",
    )
    parser.add_argument("--timeout", type=float, help="give up after this many seconds")
    parser.add_argument(
        "--queue", metavar="NAME", help="a durable queue instead of a temporary one"
    )
    broker = parser.add_argument_group("broker (defaults: the MESSAGE_BROKER_* variables)")
    broker.add_argument("--host", default=env("MESSAGE_BROKER_HOST", "localhost"))
    broker.add_argument("--port", type=int, default=env("MESSAGE_BROKER_PORT", "5672"))
    broker.add_argument("--username", default=env("MESSAGE_BROKER_USERNAME", "guest"))
    broker.add_argument("--password", default=env("MESSAGE_BROKER_PASSWORD", "guest"))
    broker.add_argument("--logs-exchange", default=env("MESSAGE_BROKER_LOGS_EXCHANGE"))
    broker.add_argument("--logs-routing-key", default=env("MESSAGE_BROKER_LOGS_ROUTING_KEY"))
    broker.add_argument("--crash-exchange", default=env("MESSAGE_BROKER_CRASH_EXCHANGE"))
    broker.add_argument("--crash-routing-key", default=env("MESSAGE_BROKER_CRASH_ROUTING_KEY"))
    args = parser.parse_args()
    for option in ("logs_exchange", "logs_routing_key", "crash_exchange", "crash_routing_key"):
        if getattr(args, option) is None:
            variable = f"MESSAGE_BROKER_{option.upper()}"
            parser.error(f"set {variable} or give --{option.replace('_', '-')}")
    if args.until_done and args.task is None:
        parser.error("--until-done needs --task")
    return args


def main() -> int:
    args = parse_args()
    # aio-pika and aiormq log every step of a reconnection, some with a traceback; this
    # script says what matters in one line instead (on_lost, on_back, main).
    logging.getLogger("aiormq").setLevel(logging.CRITICAL)
    logging.getLogger("aio_pika").setLevel(logging.CRITICAL)
    listed = ", ".join(f"{url.host}:{url.port}" for url in broker_urls(args))
    broker = f"the broker at {listed}"
    try:
        return asyncio.run(follow(args))
    except KeyboardInterrupt:
        return 130
    except Failed as exc:
        print(f"follow_notices: {exc}", file=sys.stderr)
    except ProbableAuthenticationError:
        print(f"follow_notices: {broker} refused user {args.username!r}", file=sys.stderr)
    except (OSError, AMQPConnectionError, TimeoutError) as exc:
        reason = str(exc) or type(exc).__name__
        print(f"follow_notices: cannot reach {broker}: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
