"""The sample topology (testing-configurations/topology.toml) as a fault-suite pipeline:
its stage queues, its end queues (lab-passed, lab-failed), its logs and crashes, declared by
`ulos-py topology apply` given every broker of a cluster. Used by the cluster fault case and
the cluster benchmark."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

from tests.support.fault_pipeline import DONE, FAILED, FaultLine
from tests.support.harness import stage
from tests.support.services import ROOT

SAMPLE_TOPOLOGY = ROOT / "testing-configurations" / "topology.toml"
ENDS = {DONE: "lab-passed", FAILED: "lab-failed"}
ROUTING_KEYS = {DONE: "lab.passed", FAILED: "lab.failed"}
NOTICE_EXCHANGES = {
    "MESSAGE_BROKER_LOGS_EXCHANGE": "logs-exchange",
    "MESSAGE_BROKER_CRASH_EXCHANGE": "crash-exchange",
}
"""A node's settings for the sample's notice exchanges (the routing keys are the tests')."""


class SampleLine(FaultLine):
    """The sample topology's queues and exchanges instead of a case's own."""

    def stage_queue(self, name: str) -> str:
        return name

    def output_queue(self, key: str) -> str:
        return ENDS[key]

    @property
    def exchange(self) -> str:
        return "processing-exchange"

    @property
    def logs(self) -> str:
        return "logs"

    @property
    def crashes(self) -> str:
        return "crashes"

    async def declare(self) -> None:
        """`ulos-py topology apply` of the sample file, given every broker of the cluster."""
        hosts = ",".join(f"{b.host}:{b.port}" for b in (self.broker, *self.fallbacks))
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "ulos_py", "topology", "apply", str(SAMPLE_TOPOLOGY)],
            cwd=ROOT,
            env={"PATH": "/usr/bin:/bin", "MESSAGE_BROKER_HOST": hosts},
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr

    async def delete(self) -> None:
        """The cluster goes with the module."""

    def tree(self, fail_last: bool) -> dict[str, Any]:
        node: dict[str, Any] | None = None
        for index in reversed(range(len(self.stages))):
            last = index == len(self.stages) - 1
            key = f"{self.stages[index]}-fail" if fail_last and last else self.stages[index]
            node = stage(
                self.exchange,
                key,
                success=node or stage(self.exchange, ROUTING_KEYS[DONE]),
                failure=stage(self.exchange, ROUTING_KEYS[FAILED]),
            )
        assert node is not None
        return node
