"""The 3-stage sample pipeline on a 3-node RabbitMQ cluster against a single broker, in one run.

    .venv/bin/python -m benchmarks.cluster_pipeline [--tasks 600]

Each setup starts its own broker nodes on loopback (tests/support/rabbit_cluster.py: a
1-node "cluster" for the single broker, three joined nodes for the cluster), applies the
sample topology (every queue a quorum queue, so the cluster replicates each on three
nodes) with `ulos-py topology apply`, and runs one `ulos-py node` per stage (testing-1,
testing-2, testing-3; built-in executor that passes at once; prefetch 20), each connected
to another broker of the cluster. It publishes every task at once and times from the first
publish until the last task reached `lab-passed`/`lab-failed`. The CPU of the broker nodes
(their Erlang VMs, from /proc) over the same span is reported beside it. Both setups run on
the same machine in the same run, so their ratio is what to read (SPEC §9).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from benchmarks.proc_probes import cpu_seconds
from tests.support.fault_pipeline import DONE, Nodes
from tests.support.faults import RestartableFtp
from tests.support.rabbit_cluster import RabbitCluster
from tests.support.sample_line import NOTICE_EXCHANGES, SampleLine
from tests.support.services import Names

STAGES = ("testing-1", "testing-2", "testing-3")


@dataclass(frozen=True)
class Result:
    setup: str
    brokers: int
    tasks: int
    seconds: float
    broker_cpu_seconds: float

    @property
    def tasks_per_second(self) -> float:
        return self.tasks / self.seconds

    @property
    def broker_cpu_percent(self) -> float:
        """Of one core, all broker nodes together."""
        return 100 * self.broker_cpu_seconds / self.seconds

    def line(self) -> str:
        return (
            f"{self.setup:<16} {self.brokers} broker(s)  {self.tasks} tasks in "
            f"{self.seconds:6.1f} s = {self.tasks_per_second:6.1f} tasks/s   brokers' CPU "
            f"{self.broker_cpu_seconds:6.1f} s ({self.broker_cpu_percent:5.1f} % of a core, "
            f"{1000 * self.broker_cpu_seconds / self.tasks:.1f} ms a task)"
        )


async def run_setup(setup: str, size: int, tasks: int, folder: Path, ftp: RestartableFtp) -> Result:
    cluster = RabbitCluster(folder / setup, size=size)
    nodes = Nodes(folder / f"{setup}-nodes")
    nodes.folder.mkdir(parents=True)
    try:
        cluster.start()
        brokers = [member.broker for member in cluster.members]
        names = Names(f"b-{uuid.uuid4().hex[:8]}")
        line = SampleLine(names, brokers[0], STAGES, quorum=True, fallbacks=tuple(brokers[1:]))
        await line.declare()
        registry = line.registry(folder, delay=0.0)
        workers = [
            nodes.start(
                line,
                ftp.server,
                stage,
                f"{names.prefix}-{stage}",
                registry,
                MESSAGE_BROKER_HOST=",".join(
                    m.address for m in cluster.members[i % size :] + cluster.members[: i % size]
                ),
                MESSAGE_BROKER_PREFETCH_COUNT=20,
                **NOTICE_EXCHANGES,
            )
            for i, stage in enumerate(STAGES)
        ]
        await nodes.wait_consuming(*workers, seconds=120)
        planned = line.plan(ftp.server, tasks, batch="x")
        pids = [member.pid for member in cluster.members]
        cpu_before = sum(cpu_seconds(pid) for pid in pids if pid is not None)
        began = time.monotonic()
        await line.publish(planned)
        await line.wait_for(DONE, tasks, seconds=900)
        seconds = time.monotonic() - began
        cpu_after = sum(cpu_seconds(pid) for pid in pids if pid is not None)
        return Result(setup, size, tasks, seconds, cpu_after - cpu_before)
    finally:
        await nodes.stop_all()
        cluster.close()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=600)
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ulos-cluster-bench-") as scratch:
        folder = Path(scratch)
        root = folder / "ftp"
        root.mkdir()
        ftp = RestartableFtp(root)
        ftp.start()
        try:
            results = [
                await run_setup("single broker", 1, args.tasks, folder, ftp),
                await run_setup("3-node cluster", 3, args.tasks, folder, ftp),
            ]
        finally:
            ftp.stop()
    single, cluster = results
    if args.json:
        print(json.dumps([{**asdict(r), "tasks_per_second": r.tasks_per_second} for r in results]))
    else:
        for result in results:
            print(result.line())
        ratio = cluster.tasks_per_second / single.tasks_per_second
        print(f"cluster / single: {ratio:.2f} of the tasks/s")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
