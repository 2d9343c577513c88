"""The task message of SPEC §2 as pydantic models.

Parsing is strict (no "1" for 1, no true for a number) because a forgiving parser hides
upstream bugs; unknown top-level fields are kept because upstream systems route their own
metadata through us.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic.alias_generators import to_camel

from ulos_py.errors import MalformedTask


def _short_string(value: str) -> str:
    if len(value.encode("utf-8")) > 255:
        raise ValueError("must be at most 255 bytes of UTF-8 (an AMQP short string)")
    return value


def _safe_ftp_path(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    if not value.startswith("/"):
        raise ValueError("must be an absolute path (start with '/')")
    if ".." in value.split("/"):
        raise ValueError("must not contain a '..' segment")
    if value.endswith("/"):
        raise ValueError("must name a file, not a directory")
    return value


ShortString = Annotated[str, AfterValidator(_short_string)]


class Outcome(StrEnum):
    """What an executor decided about a submission."""

    PASS = "pass"
    """The stage accepts the submission: the success branch follows."""
    FAIL = "fail"
    """A controlled "no": the failure branch follows."""


class RoutingNode(BaseModel):
    """One stage and the branches that follow it; the root is the current stage."""

    model_config = ConfigDict(
        frozen=True, strict=True, extra="allow", alias_generator=to_camel, validate_by_name=True
    )

    exchange: ShortString
    routing_key: ShortString
    success_routing_decision: RoutingNode | None = None
    failure_routing_decision: RoutingNode | None = None

    def wire(self) -> dict[str, Any]:
        """The wire form: camelCase names, unknown fields kept, absent branches left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


class Task(BaseModel):
    """A task message; extra fields are kept and travel on."""

    model_config = ConfigDict(
        frozen=True, strict=True, extra="allow", alias_generator=to_camel, validate_by_name=True
    )

    task_id: Annotated[str, Field(min_length=1)]
    task_owner_id: str
    file_path: Annotated[str, AfterValidator(_safe_ftp_path)]
    timeout: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    routing_tree: RoutingNode | None = None
    log_message: str | None = None


def parse_task(body: bytes) -> tuple[dict[str, Any], Task]:
    """The task in a delivery body, and the body's object as received (for notices).

    Raises MalformedTask with every problem and its JSON path, never a library error.
    """
    try:
        received = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise MalformedTask(f"body is not UTF-8 JSON: {exc}", body, []) from exc
    if not isinstance(received, dict):
        kind = type(received).__name__
        raise MalformedTask(f"body is JSON but not an object (got {kind})", body, [])
    try:
        # by alias only: the wire format's names are exactly the camelCase ones (SPEC §2)
        task = Task.model_validate(received, by_alias=True, by_name=False)
    except ValidationError as exc:
        errors = [{"path": _json_path(err["loc"]), "message": err["msg"]} for err in exc.errors()]
        summary = "; ".join(f"{e['path']}: {e['message']}" for e in errors)
        detail = f"message breaks the task format: {summary}"
        raise MalformedTask(detail, body, errors, received) from exc
    return received, task


def _json_path(loc: tuple[int | str, ...]) -> str:
    path = "$"
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def task_json_schema() -> dict[str, Any]:
    """SPEC §2 as JSON Schema, with the wire (camelCase) names, for other systems' checks."""
    schema = Task.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "ulos-py task message"
    return schema
