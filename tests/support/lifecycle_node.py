"""A node around the lifecycle on in-memory doubles (tests/support/fakes.py): the sample
task, its stages and routes, and what the unit tests assert on."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.fakes import (
    FakeDelivery,
    FakePublisher,
    FakeStorage,
    zip_bytes,
)
from ulos_py.archive import ArchiveLimits
from ulos_py.execution.builtin import Behaviour, BuiltinExecutor
from ulos_py.execution.registry import Registry
from ulos_py.lifecycle import Deps, process
from ulos_py.ports import Envelope, Executor
from ulos_py.reporting import NoticeRoutes
from ulos_py.workspace import Cleaner

NODE_ID = "node-under-test"


LOGS = ("logs-exchange", "logs-key")


CRASH = ("crash-exchange", "crash-key")


ROUTES = NoticeRoutes(LOGS[0], LOGS[1], CRASH[0], CRASH[1])


EXCHANGE = "processing-exchange"


TASK_ID = "sub-2031"


FILE = "/ftp/one/lab3/sub-2031.zip"


SUBMISSION = zip_bytes({"main.py": "print('hi')\n", "data/": b"", "data/in.txt": "1 2 3\n"})


SUCCESS = {
    "exchange": EXCHANGE,
    "routingKey": "lab.next",
    "successRoutingDecision": {"exchange": EXCHANGE, "routingKey": "lab.passed"},
    "failureRoutingDecision": {"exchange": "results", "routingKey": "lab.failed"},
    "nodeNote": "kept in the subtree",
}


FAILURE = {"exchange": "results", "routingKey": "lab.failed"}


SUCCESS_ROUTE = (EXCHANGE, "lab.next")


def task(stage: str = "pass", **fields: Any) -> dict[str, Any]:
    """A valid task whose current stage is `stage`; `fields` override or add top-level fields."""
    tree: dict[str, Any] = {
        "exchange": EXCHANGE,
        "routingKey": stage,
        "successRoutingDecision": SUCCESS,
        "failureRoutingDecision": FAILURE,
    }
    return {
        "taskId": TASK_ID,
        "taskOwnerId": "student-88",
        "filePath": FILE,
        "timeout": 10,
        "routingTree": tree,
        "course": {"code": "CS101", "term": "2024S"},
        "logMessage": "set by an upstream node",
        **fields,
    }


def encode(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode("utf-8")


def builtin_registry() -> Registry:
    """The shipped built-in behaviours, without their delays."""
    return Registry(
        (
            ("pass", BuiltinExecutor("pass", Behaviour.PASS)),
            ("fail", BuiltinExecutor("fail", Behaviour.FAIL)),
            ("crash", BuiltinExecutor("crash", Behaviour.CRASH)),
        )
    )


def only(executor: Executor) -> Registry:
    return Registry((("*", executor),))


@dataclass
class Node:
    """The doubles around one `process` call, and what they recorded."""

    work_dir: Path
    publisher: FakePublisher
    storage: FakeStorage
    executors: Registry
    requeue_on_reject: bool = False
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    journal: list[str] = field(default_factory=list)
    cleaner: Cleaner = field(default_factory=Cleaner)

    @property
    def deps(self) -> Deps:
        return Deps(
            node_id=NODE_ID,
            publisher=self.publisher,
            storage=self.storage,
            executors=self.executors,
            routes=ROUTES,
            work_dir=self.work_dir,
            limits=self.limits,
            requeue_on_reject=self.requeue_on_reject,
            cleaner=self.cleaner,
        )

    async def run(self, body: bytes, **delivery: Any) -> FakeDelivery:
        received = FakeDelivery(body, journal=self.journal, **delivery)
        await process(received, self.deps)
        await self.cleaner.drain()
        return received

    def logs(self) -> list[dict[str, Any]]:
        return [envelope.body for envelope in self.publisher.to(*LOGS)]

    def events(self) -> list[str]:
        return [notice["event"] for notice in self.logs()]

    def crashes(self) -> list[dict[str, Any]]:
        return [envelope.body for envelope in self.publisher.to(*CRASH)]

    def forwards(self) -> list[Envelope]:
        return [
            envelope
            for route, envelopes in self.publisher.published.items()
            if route not in (LOGS, CRASH)
            for envelope in envelopes
        ]

    async def assert_work_dir_empty(self) -> None:
        await self.cleaner.drain()  # removal runs in the background; the node drains it too
        assert list(self.work_dir.iterdir()) == []

    def assert_nothing_uploaded(self) -> None:
        assert self.storage.uploads == []
        assert self.storage.files.get(FILE) in (None, SUBMISSION)


def make_node(
    tmp_path: Path,
    executors: Registry | None = None,
    *,
    files: dict[str, bytes] | None = None,
    failing: set[tuple[str, str]] | None = None,
    fail_uploads: bool = False,
    requeue_on_reject: bool = False,
    limits: ArchiveLimits | None = None,
    confirm_delay: float = 0.0,
) -> Node:
    journal: list[str] = []
    return Node(
        work_dir=tmp_path,
        publisher=FakePublisher(failing, confirm_delay=confirm_delay, journal=journal),
        storage=FakeStorage(
            {FILE: SUBMISSION} if files is None else files, fail_uploads=fail_uploads
        ),
        executors=builtin_registry() if executors is None else executors,
        requeue_on_reject=requeue_on_reject,
        limits=limits or ArchiveLimits(),
        journal=journal,
    )
