"""Left-over containers: when the engine goes away mid-execution the node cannot remove the
container; it remembers it and removes it as soon as the engine answers again.

The engine adapter runs here on an in-memory docker-py double, so every rule is pinned down
without Docker; tests/faults/test_docker_engine_fault.py proves it against the real engine.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import docker.errors
import pytest
import requests
import requests.exceptions
import structlog.testing

from ulos_py.adapters.docker_engine import SWEEP_ATTEMPTS, DockerEngine
from ulos_py.errors import EngineUnavailable
from ulos_py.execution.containers import ContainerSpec

SPEC = ContainerSpec(
    image="lab/check",
    command=None,
    working_dir="/task",
    user="10001:10001",
    environment={},
    network=False,
    memory_bytes=1 << 28,
    nano_cpus=10**9,
    pids=128,
    drop_capabilities=True,
    no_new_privileges=True,
    output_bytes=1 << 20,
    labels={"ulos-py.node": "node-1"},
)


class FakeApi:
    """The docker-py calls the engine adapter makes, on a dict of containers.

    `away` makes every call fail as a vanished engine does (a dropped connection);
    `release_waits` ends the containers' waits, with `away` set: mid-execution.
    """

    def __init__(self) -> None:
        self.containers: dict[str, str] = {}  # id -> name
        self.away = False
        self.lose_create_answer = False
        self.refuse_removal = False
        self.waits = threading.Event()
        self.waiting = threading.Semaphore(0)
        self.removals = 0

    def _answer(self) -> None:
        if self.away:
            raise requests.exceptions.ConnectionError("Connection refused")

    def _id_of(self, ref: str) -> str:
        for container_id, name in self.containers.items():
            if ref in (container_id, name):
                return container_id
        raise docker.errors.NotFound(f"No such container: {ref}")

    def create_host_config(self, **kwargs: Any) -> dict[str, Any]:
        return kwargs

    def create_container(self, image: str, name: str, **kwargs: Any) -> dict[str, str]:
        self._answer()
        container_id = uuid.uuid4().hex
        self.containers[container_id] = name
        if self.lose_create_answer:
            raise requests.exceptions.ConnectionError("Connection aborted: RemoteDisconnected")
        return {"Id": container_id}

    def start(self, container_id: str) -> None:
        self._answer()

    def wait(self, container_id: str, timeout: Any = None) -> dict[str, int]:
        self._answer()
        self.waiting.release()
        self.waits.wait(10)
        self._answer()
        return {"StatusCode": 0}

    def remove_container(self, ref: str, force: bool = False) -> None:
        self._answer()
        self.removals += 1
        if self.refuse_removal:
            response = requests.Response()
            response.status_code = 409
            raise docker.errors.APIError("conflict", response, "removal already in progress")
        del self.containers[self._id_of(ref)]

    def close(self) -> None:
        pass


@pytest.fixture
def api() -> Iterator[FakeApi]:
    fake = FakeApi()
    yield fake
    fake.waits.set()  # no thread left waiting


def engine_on(api: FakeApi, interval: float = 0.05) -> DockerEngine:
    return DockerEngine(threads=4, sweep_interval=interval, connect=lambda threads: api)


async def run_until_the_engine_vanishes(engine: DockerEngine, api: FakeApi) -> None:
    """One execution whose engine goes away while the container runs."""

    async def execution() -> None:
        async with engine.container(SPEC) as container:
            await container.start()
            await container.wait()

    running = asyncio.create_task(execution())
    await asyncio.to_thread(api.waiting.acquire, True, 5)
    api.away = True
    api.waits.set()
    with pytest.raises(EngineUnavailable, match="does not answer"):
        await running


async def eventually(check: Any, seconds: float = 3) -> None:
    async with asyncio.timeout(seconds):
        while True:
            if check():
                return
            await asyncio.sleep(0.01)


async def test_a_normal_run_removes_its_container_and_leaves_nothing_to_sweep(
    api: FakeApi,
) -> None:
    engine = engine_on(api)
    api.waits.set()
    async with engine.container(SPEC) as container:
        await container.start()
        await container.wait()
        assert list(api.containers) == [container.id]
    engine.close()

    assert api.containers == {}
    assert engine.leftovers == frozenset()


async def test_containers_carry_a_name_of_ours(api: FakeApi) -> None:
    engine = engine_on(api)
    async with engine.container(SPEC) as container:
        [name] = api.containers.values()
        assert api.containers[container.id] == name
    engine.close()

    assert name.startswith("ulos-py-")


async def test_a_container_the_vanished_engine_could_not_remove_goes_when_it_is_back(
    api: FakeApi,
) -> None:
    engine = engine_on(api)
    with structlog.testing.capture_logs() as logs:
        await run_until_the_engine_vanishes(engine, api)
        [stranded] = api.containers
        assert engine.leftovers == {stranded}
        await asyncio.sleep(0.2)  # the sweeper tries while the engine is away: no harm
        assert list(api.containers) == [stranded]

        api.away = False  # back; no task uses the engine: the sweeper's round finds it
        await eventually(lambda: not api.containers)
    engine.close()

    assert engine.leftovers == frozenset()
    events = [(entry["event"], entry.get("container")) for entry in logs]
    assert ("container_removal_pending", stranded) in events
    assert ("leftover_container_removed", stranded) in events
    assert not [e for e in logs if e["event"] == "containers_left_behind"]


async def test_the_next_answered_call_sweeps_at_once(api: FakeApi) -> None:
    engine = engine_on(api, interval=60)  # the periodic round would come far too late
    await run_until_the_engine_vanishes(engine, api)
    assert api.containers

    api.away = False
    api.waits.set()
    async with engine.container(SPEC):  # a new task gets an answer from the engine
        pass
    await eventually(lambda: not api.containers)
    engine.close()

    assert engine.leftovers == frozenset()


async def test_a_create_whose_answer_was_lost_is_found_by_its_name(api: FakeApi) -> None:
    engine = engine_on(api)
    api.lose_create_answer = True
    with pytest.raises(EngineUnavailable):
        async with engine.container(SPEC):
            pytest.fail("no container to use")
    [made] = api.containers.values()
    assert engine.leftovers == {made}

    api.lose_create_answer = False
    await eventually(lambda: not api.containers)
    engine.close()


async def test_a_create_that_never_reached_the_engine_is_forgotten_quietly(
    api: FakeApi,
) -> None:
    engine = engine_on(api)
    api.away = True
    with structlog.testing.capture_logs() as logs:
        with pytest.raises(EngineUnavailable):
            async with engine.container(SPEC):
                pytest.fail("no container to use")
        api.away = False
        await eventually(lambda: engine.leftovers == frozenset())
    engine.close()

    assert api.containers == {}
    assert not [e for e in logs if e["event"] == "leftover_container_removed"]


async def test_a_cancelled_create_whose_engine_vanished_is_remembered(api: FakeApi) -> None:
    engine = engine_on(api)
    entered = asyncio.Event()

    async def execution() -> None:
        async with engine.container(SPEC):
            entered.set()

    api.away = True
    running = asyncio.create_task(execution())
    await asyncio.sleep(0)  # the create is on its way in a thread
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not entered.is_set()
    assert len(engine.leftovers) == 1
    api.away = False
    await eventually(lambda: engine.leftovers == frozenset())
    engine.close()


async def test_a_removal_the_engine_refuses_is_retried_then_given_up_loudly(
    api: FakeApi,
) -> None:
    engine = engine_on(api, interval=0.01)
    await run_until_the_engine_vanishes(engine, api)
    [stranded] = api.containers
    api.away = False
    api.refuse_removal = True
    with structlog.testing.capture_logs() as logs:
        await eventually(lambda: engine.leftovers == frozenset())
    engine.close()

    assert api.removals == SWEEP_ATTEMPTS
    [given_up] = [e for e in logs if e["event"] == "leftover_container_given_up"]
    assert given_up["container"] == stranded
    assert f"docker rm -f {stranded}" in given_up["hint"]


async def test_close_stops_the_sweeper_and_names_what_is_left_behind(api: FakeApi) -> None:
    engine = engine_on(api)
    await run_until_the_engine_vanishes(engine, api)
    [stranded] = api.containers
    with structlog.testing.capture_logs() as logs:
        engine.close()
    await asyncio.sleep(0.2)
    api.away = False
    await asyncio.sleep(0.2)

    assert list(api.containers) == [stranded]  # nobody sweeps after close
    [left] = [e for e in logs if e["event"] == "containers_left_behind"]
    assert left["containers"] == [stranded]
