"""Cancelling over HTTP (SPEC §8, §10): `POST /api/tasks/{taskId}/cancel`, thin like `api.py`.

Off unless ULOS_TRACKER_TOKEN is set, and then it needs it as a bearer token, as submitting
does. The tracker only publishes the cancellation, as `ulos-py cancel` does, to the
ULOS_CANCEL_EXCHANGE every node follows (requests close together in one message: see
`cancel_batches`); it neither knows nor needs to know whether the task
exists or has ended (cancelling an unknown or finished task does no harm). The task turns
`cancelled` in the tracker when a node's crash notice of kind `cancelled` comes in.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Body, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from ulos_py.cancellation import TEXT_LIMIT
from ulos_py.errors import PublishError
from ulos_py.tracker.api import tracker_of
from ulos_py.tracker.cancel_batches import CancelBatches
from ulos_py.tracker.submit import authorize

router = APIRouter()

DEFAULT_BY = "tracker API"
"""Who cancelled, when the request does not say."""


@dataclass(frozen=True)
class Cancelling:
    """What cancelling needs (built by the service)."""

    batches: CancelBatches
    token: str | None


class CancelRequest(BaseModel):
    """The optional JSON body: why, and who asks (a person, or the backend acting for one)."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field("", max_length=TEXT_LIMIT, description="Why, for the crash notice.")
    by: str | None = Field(
        None,
        min_length=1,
        max_length=TEXT_LIMIT,
        description=f"Who cancels, for the crash notice (default: {DEFAULT_BY!r}).",
    )


def cancelling_of(request: Request) -> Cancelling:
    found: Cancelling = tracker_of(request).extras["cancelling"]
    return found


def cancelling_on(request: Request) -> bool:
    """Whether the tracker takes cancels (ULOS_TRACKER_TOKEN is set): the journey page then
    offers a cancel form (the operator types the token; the page is never given it)."""
    found: Cancelling | None = tracker_of(request).extras.get("cancelling")
    return found is not None and found.token is not None


def authorized(request: Request) -> Cancelling:
    """The cancelling, once the request carries the token (checked before its body)."""
    cancelling = cancelling_of(request)
    authorize(request, cancelling.token, "cancelling")
    return cancelling


@router.post(
    "/api/tasks/{task_id:path}/cancel",
    status_code=202,
    responses={401: {}, 403: {}, 422: {}, 502: {}},
)
async def cancel(
    request: Request,
    task_id: str,
    cancelling: Annotated[Cancelling, Depends(authorized)],
    body: Annotated[CancelRequest | None, Body()] = None,
) -> JSONResponse:
    """Cancel the task wherever it is (running, waiting in a queue, not yet seen); 202 once
    the broker confirmed the cancellation. The task's state turns `cancelled` when the node
    that stops it reports so."""
    asked = body or CancelRequest(reason="", by=None)
    try:
        made = await cancelling.batches.cancel(task_id, asked.by or DEFAULT_BY, asked.reason)
    except PublishError as exc:
        raise HTTPException(502, f"ULOS_CANCEL_EXCHANGE: cancel not sent: {exc}") from exc
    quoted = urllib.parse.quote(task_id, safe="")
    return JSONResponse(
        {
            **made.body(),
            "url": str(request.base_url).rstrip("/") + f"/api/tasks/{quoted}",
        },
        202,
    )
