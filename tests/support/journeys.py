"""Notices as nodes send them, for the journey and tracker tests."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from ulos_py.journey import Notice

T0 = datetime(2025, 3, 1, 12, tzinfo=UTC)
X = "processing"


def tree(*keys: str) -> dict[str, Any] | None:
    """A chain of stages, each passing on to the next; the last has no decisions."""
    node: dict[str, Any] | None = None
    for key in reversed(keys):
        node = {"exchange": X, "routingKey": key, "successRoutingDecision": node}
    return node


class Node:
    """Builds the notices one node would send, a millisecond apart."""

    def __init__(self, task_id: str = "t1", node_id: str = "n1", start: int = 0) -> None:
        self.task_id, self.node_id, self.ms = task_id, node_id, start

    def say(self, event: str, key: str | None, routing: Any = None, **fields: Any) -> Notice:
        self.ms += 1
        body = {
            "taskId": self.task_id,
            "taskOwnerId": "alice",
            "filePath": f"/ftp/{self.task_id}.zip",
            "timeout": 10,
            "routingTree": routing,
            "event": event,
            "nodeId": self.node_id,
            "timestamp": (T0 + timedelta(milliseconds=self.ms)).isoformat(),
            "stage": {"exchange": X, "routingKey": key} if key else None,
            **fields,
        }
        return Notice(body)

    def stage(self, keys: tuple[str, ...], outcome: str = "pass") -> list[Notice]:
        """A whole pass of the first stage of `keys`, forwarding to the next or completing."""
        routing = tree(*keys)
        key = keys[0]
        notices = [
            self.say("received", key, routing),
            self.say("downloaded", key, routing),
            self.say("execution_started", key, routing),
            self.say("execution_finished", key, routing, outcome=outcome),
            self.say("uploaded", key, routing),
        ]
        if len(keys) > 1:
            target = {"exchange": X, "routingKey": keys[1]}
            notices.append(self.say("forwarded", key, routing, target=target))
        else:
            notices.append(self.say("completed", key, routing))
        return [*notices, self.say("acked", key, routing)]
