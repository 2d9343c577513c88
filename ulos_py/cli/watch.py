"""`ulos-py watch`: follow every node's log and crash notices live, task by task."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import uuid
from datetime import datetime
from pathlib import Path

import click
from pydantic import Field

from ulos_py.adapters import rabbitmq, rabbitmq_tooling
from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.errors import ConfigError
from ulos_py.journey import (
    Board,
    Completed,
    Crashed,
    Forwarded,
    Journey,
    Notice,
    StageKey,
    StageVisit,
    read_notice,
)
from ulos_py.log import configure_logging
from ulos_py.settings import ConnectionSettings, load

PREVIEW = 200
"""Characters of a body that is not JSON shown to the operator."""


class NoticeSettings(ConnectionSettings):
    """Where nodes send their notices: a node's own variables, optional here because the
    command's options may give them instead."""

    logs_exchange: str | None = Field(None, alias="MESSAGE_BROKER_LOGS_EXCHANGE")
    logs_routing_key: str | None = Field(None, alias="MESSAGE_BROKER_LOGS_ROUTING_KEY")
    crash_exchange: str | None = Field(None, alias="MESSAGE_BROKER_CRASH_EXCHANGE")
    crash_routing_key: str | None = Field(None, alias="MESSAGE_BROKER_CRASH_ROUTING_KEY")


def _binding(kind: str, exchange: str | None, key: str | None) -> tuple[str, str]:
    """One (exchange, routing key) pair to follow, or the line that says what is missing."""
    variable = f"MESSAGE_BROKER_{kind.upper()}"
    if exchange is None:
        raise ConfigError(f"{variable}_EXCHANGE is not set (or give --{kind}-exchange)")
    if key is None:
        raise ConfigError(f"{variable}_ROUTING_KEY is not set (or give --{kind}-key)")
    if exchange == "":
        raise ConfigError(
            f"{variable}_EXCHANGE is the default exchange: those notices go straight to queue "
            f"{key!r}, and a watcher cannot take copies of them"
        )
    return exchange, key


def _first(given: str | None, configured: str | None) -> str | None:
    return given if given is not None else configured


@click.command()
@click.option(
    "--json",
    "json_lines",
    is_flag=True,
    help="Print every notice as one compact JSON object per line, and nothing else on "
    "stdout (messages and the final table go to stderr).",
)
@click.option(
    "--task",
    "task_ids",
    multiple=True,
    metavar="ID",
    help="Show only the task with this taskId; repeat for several.",
)
@click.option("--logs-exchange", metavar="NAME", help="Instead of MESSAGE_BROKER_LOGS_EXCHANGE.")
@click.option("--logs-key", metavar="KEY", help="Instead of MESSAGE_BROKER_LOGS_ROUTING_KEY.")
@click.option("--crash-exchange", metavar="NAME", help="Instead of MESSAGE_BROKER_CRASH_EXCHANGE.")
@click.option("--crash-key", metavar="KEY", help="Instead of MESSAGE_BROKER_CRASH_ROUTING_KEY.")
@env_file_option
@one_line_errors
def watch(
    json_lines: bool,
    task_ids: tuple[str, ...],
    logs_exchange: str | None,
    logs_key: str | None,
    crash_exchange: str | None,
    crash_key: str | None,
    env_file: Path | None,
) -> None:
    """Follow the log and crash notices of every node, live, until Ctrl-C or SIGTERM.

    The exchanges and keys are a node's (MESSAGE_BROKER_LOGS_* and MESSAGE_BROKER_CRASH_*,
    from the environment or --env-file); the watcher takes copies on a queue of its own,
    which goes away with it. Each line shows a task after a notice changed it: the stages
    it passed (✓ pass, ✗ fail), the stage it is at and its last event, or how it ended
    (forwarded, completed, crashed with the reason). Ctrl-C ends with a table of every
    task seen. A crash is reported on both exchanges, so --json shows it twice.
    """
    _quiet_libraries()
    settings = load(NoticeSettings, env_file)
    bindings = [
        _binding(
            "logs",
            _first(logs_exchange, settings.logs_exchange),
            _first(logs_key, settings.logs_routing_key),
        ),
        _binding(
            "crash",
            _first(crash_exchange, settings.crash_exchange),
            _first(crash_key, settings.crash_routing_key),
        ),
    ]
    screen = Screen(json_lines, frozenset(task_ids))
    try:
        asyncio.run(_follow(settings, bindings, screen))
        screen.finish()
    except BrokenPipeError:
        # The reader went away (`| head`): that ends the watch. Point stdout at /dev/null
        # so that Python's own flush at exit does not complain about the pipe again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _quiet_libraries() -> None:
    """Our own lines say what went wrong or was missed; aio-pika's and aiormq's log lines
    would only repeat them (Python prints a library's warnings when nothing handles them),
    and our own log must not end up in the stdout of --json."""
    configure_logging(level="warning")
    for name in ("aio_pika", "aiormq"):
        logging.getLogger(name).addHandler(logging.NullHandler())


async def _follow(
    settings: ConnectionSettings, bindings: list[tuple[str, str]], screen: Screen
) -> None:
    """Show notices until SIGINT or SIGTERM; errors of the broker end it at once."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    following = asyncio.create_task(_receive(settings, bindings, screen))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if following.done():
        following.result()  # the broker's error, as one line
        return
    following.cancel()
    await asyncio.wait({following})


async def _receive(
    settings: ConnectionSettings, bindings: list[tuple[str, str]], screen: Screen
) -> None:
    who = f"{socket.gethostname()}.{os.getpid()}"
    address = rabbitmq.BrokerAddress.of(settings, f"ulos-py watch {who}")
    connection = await rabbitmq.connect(address)
    queue_name = f"ulos-py.watch.{who}.{uuid.uuid4().hex[:8]}"
    try:
        async with rabbitmq_tooling.observe(
            connection, bindings, queue_name, screen.say
        ) as messages:
            screen.say(f"following {_pairs(bindings)}; Ctrl-C stops")
            async for message in messages:
                screen.show(message)
    finally:
        await connection.close()


class Screen:
    """What the operator sees: a line whenever a task's view shows something new (or each
    notice as JSON), then a table of every task."""

    def __init__(self, json_lines: bool, task_ids: frozenset[str]) -> None:
        self.board = Board()
        self.json_lines = json_lines
        self.task_ids = task_ids
        self.unreadable = 0
        self.anonymous = 0
        self._widths = [0, 0]
        self._shown: dict[str, str] = {}

    def say(self, sentence: str) -> None:
        click.echo(f"ulos-py watch: {sentence}", err=True)

    def show(self, message: rabbitmq_tooling.Observed) -> None:
        notice = read_notice(message.body)
        if notice is None:
            self.unreadable += 1
            self._unreadable(message)
            return
        if self.task_ids and notice.task_id not in self.task_ids:
            return
        view = self.board.apply(notice)
        if notice.task_id is None:
            self.anonymous += 1
        if self.json_lines:
            click.echo(json.dumps(notice.body, ensure_ascii=False, separators=(",", ":")))
        elif view is not None:
            passed, state = _describe(view)
            text = f"passed: {passed} | {state}" if passed else state
            # A settlement (acked, rejected) changes the view but seldom what it shows.
            if self._shown.get(view.task_id) != text:
                self._shown[view.task_id] = text
                click.echo(self._line(notice, view.task_id, text))
        elif notice.task_id is None:
            sentence = f"{notice.event}: {notice.body.get('logMessage', '')}"
            click.echo(self._line(notice, "(no task id)", sentence))

    def _unreadable(self, message: rabbitmq_tooling.Observed) -> None:
        preview = message.body[:PREVIEW].decode("utf-8", errors="replace")
        more = "…" if len(message.body) > PREVIEW else ""
        where = f"{message.exchange!r} / {message.routing_key!r}"
        if self.json_lines:
            self.say(f"not a JSON notice on {where}: {preview!r}{more}")
        else:
            click.echo(f"{_clock(None)} (not a JSON notice on {where}) {preview!r}{more}")

    def _line(self, notice: Notice, task_id: str, text: str) -> str:
        stage = _label(notice.stage)
        shown = (task_id, stage)
        self._widths = [max(w, min(len(s), 40)) for w, s in zip(self._widths, shown, strict=True)]
        task_width, stage_width = self._widths
        return f"{_clock(notice.timestamp)} {task_id:<{task_width}}  {stage:<{stage_width}}  {text}"

    def finish(self) -> None:
        """The table of every task seen: on stdout, or stderr when stdout is JSON."""
        err = self.json_lines
        views = list(self.board.tasks.values())
        click.echo(err=err)
        click.echo(_totals(views, self.unreadable, self.anonymous), err=err)
        if not views:
            return
        described = ((view.task_id, *_describe(view)) for view in views)
        rows = [("TASK", "PASSED", "STATE"), *((t, p or "-", s) for t, p, s in described)]
        widths = [max(len(click.unstyle(row[i])) for row in rows) for i in range(2)]
        for task_id, passed, state in rows:
            click.echo(f"{_pad(task_id, widths[0])}  {_pad(passed, widths[1])}  {state}", err=err)


def _describe(view: Journey) -> tuple[str, str]:
    """The stages behind a task, and where it is now or how it ended."""
    passed = " ".join(f"{_label(visit.stage)} {_mark(visit)}" for visit in view.passed)
    return passed, _state(view)


def _state(view: Journey) -> str:
    last = view.last
    if last is None:
        return "-"
    where = _label(last.stage)
    end = last.end
    if last.open:
        attempt = f", attempt {last.attempt}" if last.attempt > 1 else ""
        mark = f" {_mark(last)}" if last.outcome else ""
        return f"now {where}{mark} ({last.last_event}{attempt})"
    if isinstance(end, Forwarded):
        return f"forwarded to {_label(end.target)}"
    if isinstance(end, Completed):
        return "completed"
    if isinstance(end, Crashed):
        back = " (back in the queue)" if last.requeued else ""
        reason = click.style(f"{end.kind}: {end.detail}", fg="red")
        return f"crashed at {where}: {reason}{back}"
    if last.requeued:
        return f"back in the queue at {where}"
    return f"{last.settled} at {where}"


def _totals(views: list[Journey], unreadable: int, anonymous: int) -> str:
    counts: dict[str, int] = {}
    for view in views:
        word = _standing(view)
        counts[word] = counts.get(word, 0) + 1
    parts = [f"{n} {word}" for word, n in counts.items()]
    if unreadable:
        parts.append(f"{unreadable} notice(s) not JSON")
    if anonymous:
        parts.append(f"{anonymous} notice(s) without a task id")
    noun = "task" if len(views) == 1 else "tasks"
    return f"{len(views)} {noun} seen" + (f": {', '.join(parts)}" if parts else "")


def _standing(view: Journey) -> str:
    """One word for the summary's counts."""
    last = view.last
    if last is None or last.open:
        return "running"
    if last.end is not None:
        return {Forwarded: "forwarded", Completed: "completed", Crashed: "crashed"}[type(last.end)]
    return "requeued" if last.requeued else last.settled or "?"


def _mark(visit: StageVisit) -> str:
    if visit.outcome == "pass":
        return click.style("✓", fg="green")
    if visit.outcome == "fail":
        return click.style("✗", fg="red")
    return visit.outcome or "?"


def _label(stage: StageKey | None) -> str:
    if stage is None:
        return "(no stage)"
    return stage.routing_key or f"{stage.exchange}:''"


def _clock(when: datetime | None) -> str:
    """Local wall-clock time of a notice (now, when it carries none)."""
    return (when or datetime.now()).astimezone().strftime("%H:%M:%S")


def _pad(text: str, width: int) -> str:
    return text + " " * (width - len(click.unstyle(text)))


def _pairs(bindings: list[tuple[str, str]]) -> str:
    return " and ".join(f"{exchange!r} / {key!r}" for exchange, key in bindings)
