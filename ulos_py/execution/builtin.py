"""In-process executors for tests and demos: decide after a delay, touch no files."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from enum import StrEnum

from ulos_py.errors import ExecutionCrashed
from ulos_py.models import Outcome, RoutingNode
from ulos_py.ports import ExecutionResult, TaskFiles, TimeoutPolicy


class Behaviour(StrEnum):
    """What a built-in executor does once its delay is over."""

    PASS = "pass"
    """Decide PASS."""
    FAIL = "fail"
    """Decide FAIL (a controlled "no")."""
    CRASH = "crash"
    """Crash, as a broken executor would."""


@dataclass(frozen=True)
class BuiltinExecutor:
    """Waits `delay_seconds`, then behaves as told."""

    name: str
    behaviour: Behaviour
    delay_seconds: float = 0.0
    on_timeout: TimeoutPolicy = TimeoutPolicy.CRASH

    async def run(self, files: TaskFiles, stage: RoutingNode) -> ExecutionResult:
        if self.delay_seconds > 0:
            await asyncio.sleep(self.delay_seconds)
        summary = f"built-in executor {self.name!r} on stage {stage.routing_key!r}"
        if self.behaviour is Behaviour.CRASH:
            raise ExecutionCrashed(f"{summary} crashed on purpose")
        outcome = Outcome.PASS if self.behaviour is Behaviour.PASS else Outcome.FAIL
        return ExecutionResult(outcome, f"{summary}: {outcome.value}\n")
