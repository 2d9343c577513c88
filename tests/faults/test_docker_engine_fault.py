"""The Docker engine goes away while containers run, and comes back.

The node reaches the engine over TCP through a proxy the test cuts (as when a remote engine
host goes down; the shared local engine itself is never stopped). The tasks in flight and
those taken while the engine is away crash (`execution`, "does not answer"); the
containers the node could not remove stay on the engine until it answers again, and then
the node removes them by itself; new tasks pass again.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.support.docker_probe import EngineProxy, probe_registry
from tests.support.fault_pipeline import DONE, Nodes
from tests.support.faults import MakeLine
from tests.support.services import Broker, Engine, FtpServer

pytestmark = [
    pytest.mark.fault,
    pytest.mark.timeout(150),
    pytest.mark.usefixtures("executor_images"),
]

RUN_PY = "import time\nprint('working', flush=True)\ntime.sleep(1.5)\nprint('done')\n"
BEFORE, DURING, AFTER = 12, 6, 12
AWAY_FOR = 4.0
CLEAN_WITHIN = 10.0
"""Seconds after the engine's return by which the stranded containers must be gone."""


def containers_of(engine: Engine, node_id: str) -> dict[str, str]:
    """id -> name of the node's containers on the real engine, running or not."""
    label = {"label": f"ulos-py.node={node_id}"}
    found = engine.client.api.containers(all=True, filters=label)  # one call: see conftest
    return {c["Id"]: c["Names"][0].lstrip("/") for c in found}


def remove_containers_of(engine: Engine, node_id: str) -> dict[str, str]:
    """The node's containers still on the engine, which are then removed: a failing run
    must not leave them on the engine others share."""
    left = containers_of(engine, node_id)
    for container_id in left:
        engine.client.api.remove_container(container_id, force=True)
    return left


async def running_containers(engine: Engine, node_id: str, at_least: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(
            engine.client.api.containers, filters={"label": f"ulos-py.node={node_id}"}
        )
        if len(found) >= at_least:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {at_least} containers of {node_id} running")


async def gone_within(engine: Engine, node_id: str, ids: set[str], seconds: float) -> float:
    """Seconds until none of `ids` is on the engine any more."""
    began = time.monotonic()
    while ids & set(await asyncio.to_thread(containers_of, engine, node_id)):
        if time.monotonic() - began > seconds:
            raise AssertionError(f"left-over containers still there after {seconds} s")
        await asyncio.sleep(0.2)
    return time.monotonic() - began


async def test_engine_gone_mid_execution_crashes_cleans_up_and_recovers(
    broker: Broker,
    ftp_server: FtpServer,
    docker_engine: Engine,
    make_line: MakeLine,
    nodes: Nodes,
    tmp_path: Path,
) -> None:
    line = await make_line(broker, stages=("probe",))
    tree = line.tree(fail_last=False)
    files: dict[str, bytes | str] = {"run.py": RUN_PY}
    node_id = f"{line.names.prefix}-node"
    proxy = EngineProxy()
    await proxy.start()
    try:
        node = nodes.start(
            line,
            ftp_server,
            "probe",
            node_id,
            probe_registry(tmp_path),
            DOCKER_HOST=f"tcp://127.0.0.1:{proxy.port}",
        )
        await nodes.wait_consuming(node)
        before = line.plan(ftp_server, BEFORE, "a", tree, files)
        await line.publish(before)
        await line.wait_for(DONE, 4, seconds=60)
        await running_containers(docker_engine, node.node_id, at_least=2, seconds=30)

        await proxy.stop()  # mid-execution: containers are running
        await asyncio.sleep(1.5)  # the node sees the engine gone; its tasks crash
        stranded = await asyncio.to_thread(containers_of, docker_engine, node.node_id)
        during = line.plan(ftp_server, DURING, "b", tree, files)
        await line.publish(during)
        await line.settle(BEFORE + DURING, seconds=30)
        await asyncio.sleep(max(0.0, AWAY_FOR - 1.5))

        await proxy.start()  # the engine is back at the same address
        cleaned = await gone_within(docker_engine, node.node_id, set(stranded), CLEAN_WITHIN)
        after = line.plan(ftp_server, AFTER, "c", tree, files)
        await line.publish(after)
        await line.settle(BEFORE + DURING + AFTER, seconds=60)
        survived = node.alive
        status = await node.stop()
    finally:
        await proxy.stop()
        left = await asyncio.to_thread(remove_containers_of, docker_engine, node_id)

    ledger = await line.account("Docker engine away 4 s", before + during + after)
    removed = {e["container"] for e in node.log_events("leftover_container_removed")}
    ledger.notes.append(
        f"{len(stranded)} containers stranded, removed by the node {cleaned:.1f} s after "
        f"the engine returned; {len(left)} left at the end"
    )
    ledger.record()
    ledger.check()
    assert survived and status == 0
    assert stranded, "no container was running when the engine went away"
    assert all(cid in removed or name in removed for cid, name in stranded.items()), removed
    assert left == {}, "a container outlived its task"
    fates = ledger.fates()
    assert {fates[p.task_id] for p in during} == {"crashed"}
    assert {fates[p.task_id] for p in after} == {"arrived"}, "the node did not recover"
    assert ledger.count("arrived") >= 4 + AFTER
    assert set(ledger.crash_kinds()) == {"execution"}
    for task_id, notices in ledger.crashes.items():
        detail = notices[-1]["error"]["detail"]
        assert "does not answer" in detail, (task_id, detail)
