"""Pure routing rules: which stage a task is at, where it goes next, and under which id."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ulos_py.errors import NoRouting
from ulos_py.models import Outcome, RoutingNode, Task


def current_stage(task: Task) -> RoutingNode:
    """The stage this node must run: the root of the routing tree."""
    if task.routing_tree is None:
        raise NoRouting("the task has no routing tree, so there is no stage to run")
    return task.routing_tree


def next_hop(stage: RoutingNode, outcome: Outcome) -> RoutingNode | None:
    """The branch the outcome selects; None ends the task's journey."""
    if outcome is Outcome.PASS:
        return stage.success_routing_decision
    return stage.failure_routing_decision


def forward_body(received: dict[str, Any], hop: RoutingNode) -> dict[str, Any]:
    """The task as the next stage receives it: as received, with the branch as the new tree."""
    body = {**received, "routingTree": hop.wire()}
    body.pop("logMessage", None)
    return body


def forward_message_id(task: Task, stage: RoutingNode, outcome: Outcome) -> str:
    """Same task, same stage, same outcome → same id, so consumers can drop duplicates.

    The whole remaining tree goes into the hash, not only the routing key, because one key
    may appear at several depths of a tree and those are different hops.
    """
    # exclude_none: an explicit null branch and a missing one mean the same (SPEC §2)
    tree = json.dumps(
        stage.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=True
    )
    digest = hashlib.sha256(f"{task.task_id}\x00{tree}\x00{outcome.value}".encode())
    return digest.hexdigest()[:32]


MAX_FILE_NAME_BYTES = 255


def output_file_name(stage: RoutingNode) -> str:
    """SPEC §5 output file name, with path separators made harmless.

    Exchange and key may each be 255 bytes, more than a file name may hold; a name too
    long is cut and given a hash of the whole, so it stays unique per stage.
    """
    name = f"output_{stage.exchange}_{stage.routing_key}"
    name = name.replace("/", "_").replace("\\", "_").replace("\x00", "_")
    if len(name.encode()) + len(".txt") <= MAX_FILE_NAME_BYTES:
        return f"{name}.txt"
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    head = name.encode()[:200].decode("utf-8", errors="ignore")
    return f"{head}-{digest}.txt"
