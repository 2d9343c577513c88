"""The dashboard (SPEC §11): server-rendered pages over the tracker's queries, read-only.

Thin like the API beside it: each handler parses its parameters, asks the queries and hands
the answers to a Jinja2 template (autoescaped: every value from a task is text, never HTML).
A page asked with `?partial=1` answers its live part alone; `static/live.js` fetches that
whenever the tracker's event stream says a task changed, so a page updates without a reload.
Assets come from the package, nothing from the internet.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import jinja2
from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, Response

from ulos_py.journey import State
from ulos_py.tracker import page_queries, page_views, queries
from ulos_py.tracker.api import tracker_of
from ulos_py.tracker.cancel import cancelling_on
from ulos_py.tracker.queries import BadCursor, TaskFilter
from ulos_py.tracker.store import FINAL_STATES, Store

WEB = Path(__file__).parent / "web"
STATIC = {
    "dashboard.css": "text/css; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "journey.js": "text/javascript; charset=utf-8",
    "cancel.js": "text/javascript; charset=utf-8",
}
ENDED = frozenset(state.value for state in FINAL_STATES - {State.DELIVERED})
"""States whose journey page offers no cancel: nothing is left to stop (a delivered task may
still be taken by a node)."""
PAGE_SIZE = 50
STUCK_SHOWN = 20
"""The overview lists the longest stuck; the rest are a link to the stuck list away."""
WINDOW = timedelta(hours=1)

router = APIRouter(include_in_schema=False)


def quote_id(value: object) -> str:
    """An id as one URL path segment: `/`, `?`, `#` and `%` encoded too."""
    return quote(str(value), safe="")


_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(WEB / "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_templates.filters.update(
    quote_id=quote_id, seconds=page_views.seconds_text, step_name=page_views.STEP_NAMES.get
)


def _store(request: Request) -> Store:
    return tracker_of(request).store


StoreDep = Annotated[Store, Depends(_store)]


def render(request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
    """The page, or with `?partial=1` only its live part (for live.js)."""
    partial = request.query_params.get("partial") == "1"
    now = datetime.now(UTC)
    html = _templates.get_template(template).render(
        partial=partial,
        now=now,
        age=lambda when: page_views.age_text(when, now),
        states=[state.value for state in State],
        **values,
    )
    return HTMLResponse(html, status, headers={"Cache-Control": "no-store"})


@router.get("/static/{name}")
async def static(name: str) -> Response:
    if name not in STATIC:
        raise HTTPException(404, "no such asset")
    return FileResponse(WEB / "static" / name, media_type=STATIC[name])


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, store: StoreDep) -> HTMLResponse:
    now = datetime.now(UTC)
    # Independent reads, each on its own connection: together they take the longest one's time.
    counts, series, stats, stuck, nodes = await asyncio.gather(
        page_queries.state_counts(store, now),
        page_queries.throughput(store, 60, now),
        queries.stage_stats(store, now - WINDOW, now),
        queries.stuck_tasks(store, now, limit=STUCK_SHOWN),
        page_queries.node_activity(store, WINDOW, now),
    )
    crashes: dict[str, int] = {}
    for stage in stats:
        for kind, count in stage["crashes"].items():
            crashes[kind] = crashes.get(kind, 0) + count
    return render(
        request,
        "overview.html",
        counts=counts,
        chart=page_views.throughput_chart(series, 60),
        stats=stats,
        crashes=sorted(crashes.items(), key=lambda item: -item[1]),
        stuck=stuck,
        nodes=nodes,
    )


@router.get("/tasks", response_class=HTMLResponse)
async def task_list(
    request: Request,
    store: StoreDep,
    q: Annotated[str, Query(max_length=500)] = "",
    owner: Annotated[str, Query(max_length=500)] = "",
    state: str = "",
    stage: Annotated[str, Query(max_length=500)] = "",
    cursor: str | None = None,
) -> HTMLResponse:
    chosen = State(state) if state in {s.value for s in State} else None
    filters = TaskFilter(owner=owner or None, state=chosen, stage=stage or None, text=q or None)
    try:
        page = await queries.task_list(store, filters, PAGE_SIZE, cursor)
    except BadCursor:
        page = await queries.task_list(store, filters, PAGE_SIZE)
        cursor = None
    shown = {"q": q, "owner": owner, "state": chosen.value if chosen else "", "stage": stage}
    kept = {key: value for key, value in shown.items() if value}
    return render(
        request,
        "tasks.html",
        page=page,
        form=shown,
        first_url="/tasks" + (f"?{urlencode(kept)}" if kept else ""),
        next_url=f"/tasks?{urlencode({**kept, 'cursor': page.next})}" if page.next else None,
        paged=cursor is not None,
    )


@router.get("/tasks/{task_id:path}", response_class=HTMLResponse)
async def task_journey(request: Request, task_id: str, store: StoreDep) -> HTMLResponse:
    task = await queries.task_journey(store, task_id)
    if task is None:
        return render(request, "not_found.html", 404, what="task", name=task_id)
    now = datetime.now(UTC)
    visits = task["visits"]
    tree = page_views.routing_path(await page_queries.routing_tree(store, task_id), visits)
    return render(
        request,
        "journey.html",
        task=task,
        rows=page_views.timeline(visits, now),
        tree=tree,
        cancellable=cancelling_on(request) and task["state"] not in ENDED,
    )


@router.get("/owners/{owner:path}", response_class=HTMLResponse)
async def owner_page(request: Request, owner: str, store: StoreDep) -> HTMLResponse:
    submissions = list(reversed(await queries.owner_tasks(store, owner)))
    return render(request, "owner.html", owner=owner, submissions=submissions)
