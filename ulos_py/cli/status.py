"""`ulos-py status TASK_ID`: one task's journey from the tracker, in a terminal."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from typing import Any

import click

from ulos_py.cli.common import one_line_errors
from ulos_py.errors import UlosError

TIMEOUT = 10.0


class TrackerUnreachable(UlosError):
    """The tracker did not answer, or not as a tracker would."""


def _default_url() -> str:
    host = os.environ.get("ULOS_TRACKER_HOST", "127.0.0.1")
    port = os.environ.get("ULOS_TRACKER_PORT", "8400")
    return os.environ.get("ULOS_TRACKER_URL", f"http://{host}:{port}")


def fetch_journey(base: str, task_id: str) -> dict[str, Any] | None:
    """The tracker's GET /api/tasks/{id}; None for a task it does not know."""
    url = f"{base.rstrip('/')}/api/tasks/{urllib.parse.quote(task_id, safe='')}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as answer:
            found: dict[str, Any] = json.load(answer)
            return found
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise TrackerUnreachable(f"the tracker at {base} answered {exc.code} {exc.reason}") from exc
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TrackerUnreachable(f"cannot reach the tracker at {base}: {reason}") from exc


@click.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help="Print the journey as JSON (for scripts).")
@click.option(
    "--tracker",
    "base",
    default=_default_url,
    show_default="ULOS_TRACKER_URL, or http://ULOS_TRACKER_HOST:ULOS_TRACKER_PORT",
    help="The tracker's address.",
)
@one_line_errors
def status(task_id: str, as_json: bool, base: str) -> None:
    """Show where TASK_ID is and what happened to it, stage by stage, as the tracker knows it.

    Exit status 0 when the task is known, 3 when the tracker does not know it.
    """
    found = fetch_journey(base, task_id)
    if found is None:
        click.echo(f"ulos-py status: no task {_safe(task_id)} is known to the tracker", err=True)
        raise SystemExit(3)
    if as_json:
        click.echo(json.dumps(found, ensure_ascii=False, indent=2))
        return
    for line in render(found):
        click.echo(line)


def render(task: dict[str, Any]) -> list[str]:
    """The journey as lines: the task, then one block per visit with its steps."""
    stage = task.get("stage") or {}
    lines = [
        f"task    {_safe(task['taskId'])}   owner {_safe(task.get('taskOwnerId'))}",
        f"file    {_safe(task.get('filePath'))}",
        f"state   {_safe(task['state'])} at {_safe(stage.get('routingKey', '-'))}"
        f"   (updated {_safe(task.get('updatedAt'))})",
    ]
    for visit in task.get("visits", []):
        lines.append("")
        lines.extend(_visit(visit))
    return lines


def _visit(visit: dict[str, Any]) -> list[str]:
    stage = (visit.get("stage") or {}).get("routingKey", "(no stage)")
    head = f"{_safe(stage)}  attempt {visit.get('attempt')}  on {_safe(visit.get('nodeId'))}"
    crash, forwarded = visit.get("crash"), visit.get("forwardedTo")
    if visit.get("outcome"):
        head += f"  outcome {_safe(visit['outcome'])}"
    if forwarded:
        head += f"  → {_safe(forwarded.get('routingKey'))}"
    lines = [head]
    durations = visit.get("durations", {})
    for event, when in visit.get("steps", {}).items():
        took = f"  +{durations[event]:.3f} s" if event in durations else ""
        lines.append(f"  {_clock(when)}  {_safe(event)}{took}")
    if crash:
        lines.append(f"  crashed: {_safe(crash.get('kind'))}: {_safe(crash.get('detail'))}")
    return lines


def _clock(when: str) -> str:
    try:
        return datetime.fromisoformat(when).astimezone().strftime("%H:%M:%S.%f")[:-3]
    except (TypeError, ValueError):
        return _safe(when)


def _safe(value: object) -> str:
    """A value from a task, with control characters shown escaped (no terminal tricks)."""
    text = "-" if value is None else str(value)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
