"""The tracker's HTTP API (SPEC §10), thin: handlers parse and format, `queries` answers.

OpenAPI is at /docs (and /openapi.json). Submitting (`POST /api/tasks`) and a task's output
live in `submit.py`; they share the app state built by `create_app`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from ulos_py.journey import State
from ulos_py.tracker import queries
from ulos_py.tracker.events import Changes
from ulos_py.tracker.ingest import IngestStatus
from ulos_py.tracker.queries import BadCursor, TaskFilter
from ulos_py.tracker.store import Store

router = APIRouter()


@dataclass
class Tracker:
    """What the handlers share: the store, the ingest's status and the change feed."""

    store: Store
    status: IngestStatus
    changes: Changes
    extras: dict[str, Any] = field(default_factory=dict)
    """What other route modules need (the publisher and storage of `submit.py`)."""


def tracker_of(request: Request) -> Tracker:
    tracker: Tracker = request.app.state.tracker
    return tracker


@router.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    """200 when the tracker is consuming its queue and its database takes writes, else 503."""
    tracker = tracker_of(request)
    writable = await tracker.store.writable()
    healthy = tracker.status.consuming and writable
    body = {
        "consuming": tracker.status.consuming,
        "databaseWritable": writable,
        "stored": tracker.status.stored,
        "lastCommit": tracker.status.last_commit.isoformat()
        if tracker.status.last_commit
        else None,
        "problem": tracker.status.problem,
    }
    return JSONResponse(body, status_code=200 if healthy else 503)


@router.get("/api/tasks")
async def list_tasks(
    request: Request,
    owner: str | None = None,
    state: State | None = None,
    stage: Annotated[str | None, Query(description="A stage's routing key.")] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    q: Annotated[str | None, Query(description="Text in the id, owner, path or stage.")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: str | None = None,
) -> dict[str, Any]:
    """Tasks, newest change first; pass `next` back as `cursor` for the following page."""
    filters = TaskFilter(owner, state, stage, _aware(since), _aware(until), q)
    try:
        page = await queries.task_list(tracker_of(request).store, filters, limit, cursor)
    except BadCursor as exc:
        raise HTTPException(422, str(exc)) from exc
    return {"items": page.items, "next": page.next}


@router.get("/api/stats")
async def stats(
    request: Request, since: datetime | None = None, until: datetime | None = None
) -> dict[str, Any]:
    """Per stage over [since, until) (the last hour by default): visits, outcomes, crash
    kinds, p50/p95 seconds of each step, finished visits per minute."""
    end = _aware(until) or datetime.now(UTC)
    start = _aware(since) or end - timedelta(hours=1)
    stages = await queries.stage_stats(tracker_of(request).store, start, end)
    return {"since": start.isoformat(), "until": end.isoformat(), "stages": stages}


@router.get("/api/nodes")
async def nodes(request: Request) -> dict[str, Any]:
    """Every node seen: its last notice, visits handled and crashes."""
    return {"items": await queries.node_list(tracker_of(request).store)}


@router.get("/api/stuck")
async def stuck(
    request: Request,
    limit: Annotated[
        int, Query(ge=1, le=10_000, description="At most this many (the list pages all).")
    ] = 1000,
) -> dict[str, Any]:
    """Tasks waiting or running longer than they should, longest stuck first; capped, since
    a stalled stage can leave tens of thousands (`/api/tasks?state=stuck` pages them all)."""
    return {"items": await queries.stuck_tasks(tracker_of(request).store, limit=limit)}


@router.get("/api/counts")
async def counts(request: Request) -> dict[str, int]:
    """Notices stored, bodies that were not notices (kept as such), and tasks."""
    return await queries.counts(tracker_of(request).store)


@router.get("/api/events")
async def events(request: Request) -> EventSourceResponse:
    """Server-sent events: one `task` event (JSON: taskId, taskOwnerId, state, stage,
    updatedAt) per change of a task, from the moment of connecting."""
    changes = tracker_of(request).changes

    async def stream() -> AsyncIterator[dict[str, str]]:
        async with changes.subscribe() as queue:
            yield {"event": "ready", "data": "{}"}
            while True:
                change = await queue.get()
                yield {"event": "task", "data": json.dumps(change, ensure_ascii=False)}

    return EventSourceResponse(stream(), ping=15)


@router.get("/api/owners/{owner:path}/tasks.csv")
async def owner_csv(request: Request, owner: str) -> Response:
    """One owner's tasks, oldest first: a grade sheet (one row per task)."""
    rows = await queries.owner_tasks(tracker_of(request).store, owner)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["taskId", "state", "stage", "outcome", "firstSeen", "updatedAt"])
    for row in rows:
        last = row["visits"][-1] if row["visits"] else {}
        stage = row["stage"]["routingKey"] if row["stage"] else ""
        cells = [row["taskId"], row["state"], stage, last.get("outcome") or ""]
        writer.writerow([_cell(c) for c in [*cells, row["firstSeen"], row["updatedAt"]]])
    headers = {"Content-Disposition": f'attachment; filename="{_filename(owner)}-tasks.csv"'}
    return Response(out.getvalue(), media_type="text/csv; charset=utf-8", headers=headers)


@router.get("/api/tasks/{task_id:path}")
async def one_task(request: Request, task_id: str) -> dict[str, Any]:
    """One task's journey: fields, state, stage and its visits in order; 404 if unknown."""
    found = await queries.task_journey(tracker_of(request).store, task_id)
    if found is None:
        raise HTTPException(404, f"no task {task_id!r} is known to this tracker")
    return found


def _aware(when: datetime | None) -> datetime | None:
    if when is None or when.tzinfo is not None:
        return when
    return when.replace(tzinfo=UTC)


def _cell(value: object) -> str:
    """A CSV cell a spreadsheet will not run as a formula."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _filename(owner: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in owner)[:80] or "owner"


def create_app(tracker: Tracker, *extra: APIRouter) -> FastAPI:
    """The tracker's app; `extra` routers (submission, pages) come before the catch-all
    task route so that their longer paths win."""
    app = FastAPI(title="ulos-py tracker", summary="Where every task is, and what happened.")
    app.state.tracker = tracker
    for more in extra:
        app.include_router(more)
    app.include_router(router)
    return app
