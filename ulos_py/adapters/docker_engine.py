"""The Docker engine through docker-py: containers, images, and our errors at this edge.

docker-py blocks, so every call runs on this adapter's own thread pool: a container's
`wait` holds a thread for the whole execution, and sharing asyncio's default pool would
starve the zip work of the other tasks.

The engine is found the way the `docker` CLI finds it (`DOCKER_HOST`, `DOCKER_TLS_VERIFY`,
`DOCKER_CERT_PATH`), and files travel through the archive API, so it may be on another host.
The client is made on first use and again after the engine went away, so a node started
before its engine, or outliving a restart of it, picks up by itself.

A container the engine did not answer for when it was to be removed (the engine went away
mid-execution) is a left-over: it is remembered, and removed as soon as the engine answers
again: at once after the next call that gets an answer, and every `sweep_interval` seconds
by a background sweeper the engine owns (stopped by `close`). Containers are created under
a name of ours, so one whose create went out but whose answer was lost is found too.
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from typing import Any, BinaryIO, TypeVar

import docker
import docker.errors
import requests.exceptions
import structlog
from docker.types import LogConfig

from ulos_py.errors import EngineError, EngineUnavailable, ImageMissing
from ulos_py.execution.containers import ContainerExit, ContainerSpec

log = structlog.get_logger(__name__)

T = TypeVar("T")
LABEL = "ulos-py"
"""Every container we create carries this label (plus node and stage ones), to find leaks."""
IN_MEMORY_TAR = 8 << 20
SWEEP_INTERVAL = 2.0
"""Seconds between attempts to remove left-over containers while the engine is away."""
SWEEP_ATTEMPTS = 10
"""Answers refusing a left-over's removal (not silence) before it is given up, with an error."""


def engine_url() -> str:
    return os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")


@contextmanager
def translated(doing: str, image: str | None = None) -> Iterator[None]:
    """docker-py and requests errors become ours, most specific first, chained."""
    try:
        yield
    except docker.errors.ImageNotFound as exc:
        if image is None:
            raise EngineError(f"{doing}: {exc.explanation}") from exc
        raise ImageMissing(
            f"image {image!r} is not on the Docker engine at {engine_url()}: "
            "build it with `ulos-py executors build`"
        ) from exc
    except docker.errors.APIError as exc:
        raise EngineError(f"{doing}: Docker engine said {exc.explanation}") from exc
    except (requests.exceptions.RequestException, docker.errors.DockerException) as exc:
        raise EngineUnavailable(
            f"{doing}: the Docker engine at {engine_url()} does not answer ({exc})"
        ) from exc


def client_from_env(threads: int) -> docker.APIClient:
    """A client for the engine the `docker` CLI would use, pooling `threads` connections."""
    params = docker.utils.kwargs_from_env()
    return docker.APIClient(version="auto", max_pool_size=threads, **params)


class DockerEngine:
    """One engine connection pool per node process, shared by all its tasks."""

    def __init__(
        self,
        threads: int = 32,
        sweep_interval: float = SWEEP_INTERVAL,
        connect: Callable[[int], docker.APIClient] = client_from_env,
    ) -> None:
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="docker")
        self._threads = threads
        self._connect = connect
        self._client: docker.APIClient | None = None
        self._client_lock = threading.Lock()
        self._leftovers = _Leftovers(sweep_interval)

    def _api(self) -> docker.APIClient:
        with self._client_lock:
            if self._client is None:
                self._client = self._connect(self._threads)
            return self._client

    def _forget_client(self) -> None:
        with self._client_lock:
            self._client = None

    async def call(
        self, doing: str, fn: Callable[..., T], *args: Any, image: str | None = None, **kw: Any
    ) -> T:
        """Run a blocking docker-py call on our pool with our errors.

        An answer means the engine is there: left-over containers are swept at once."""
        result = await self._call(doing, fn, *args, image=image, **kw)
        self._leftovers.engine_answered()
        return result

    async def _call(
        self, doing: str, fn: Callable[..., T], *args: Any, image: str | None = None, **kw: Any
    ) -> T:
        def blocking() -> T:
            with translated(doing, image):
                try:
                    return fn(self._api(), *args, **kw)
                except requests.exceptions.ConnectionError:
                    self._forget_client()  # the engine may come back elsewhere or upgraded
                    raise

        return await asyncio.get_running_loop().run_in_executor(self._pool, blocking)

    @asynccontextmanager
    async def container(self, spec: ContainerSpec) -> AsyncIterator[DockerContainer]:
        """A created container, killed and removed on every way out, cancellation included.

        If the engine does not answer the removal, the container is removed when it does."""
        name = f"{LABEL}-{uuid.uuid4().hex}"
        creating = asyncio.ensure_future(
            self.call("creating the container", _create, spec, name, image=spec.image)
        )
        try:
            container_id = await asyncio.shield(creating)
        except asyncio.CancelledError:
            await _to_the_end(self._discard(creating, name))
            raise
        except EngineUnavailable:
            self._leftover(name)  # the create may have gone out and only its answer be lost
            raise
        try:
            yield DockerContainer(self, container_id, spec)
        finally:
            await _to_the_end(self._remove(container_id))

    async def _remove(self, container_id: str) -> None:
        try:
            await self.call("removing the container", _remove, container_id)
        except EngineUnavailable:
            self._leftover(container_id)
            raise

    async def _discard(self, creating: asyncio.Future[str], name: str) -> None:
        """A create cancelled mid-way may still finish in its thread: remove what it made."""
        try:
            container_id = await creating
        except EngineUnavailable:
            self._leftover(name)
            return
        except EngineError:
            return
        with suppress(EngineError):
            await self._remove(container_id)

    def _leftover(self, container: str) -> None:
        self._leftovers.add(container, self._sweep)

    async def _sweep(self, container: str) -> bool:
        """Remove one left-over; False if it was already gone."""
        return await self._call("removing a left-over container", _remove_leftover, container)

    @property
    def leftovers(self) -> frozenset[str]:
        """Containers (ids or names) whose removal awaits the engine's return."""
        return self._leftovers.pending

    def close(self) -> None:
        self._leftovers.stop()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._client is not None:
            self._client.close()


class _Leftovers:
    """Containers to remove once the engine answers again, and the sweeper that does it.

    Lives on the event loop: `add` starts the sweeper, which tries every `interval` seconds
    (sooner when the engine answered another call) and ends when nothing is left.
    """

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._refusals: dict[str, int] = {}
        self._wake: asyncio.Event | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def pending(self) -> frozenset[str]:
        return frozenset(self._refusals)

    def add(self, container: str, remove: Callable[[str], Awaitable[bool]]) -> None:
        if container not in self._refusals:
            self._refusals[container] = 0
            log.warning(
                "container_removal_pending", container=container, retry_every=self._interval
            )
        if self._sweeper is None or self._sweeper.done():
            self._wake = asyncio.Event()
            self._sweeper = asyncio.create_task(self._sweep_until_clean(remove, self._wake))

    def engine_answered(self) -> None:
        if self._wake is not None and self._refusals:
            self._wake.set()

    async def _sweep_until_clean(
        self, remove: Callable[[str], Awaitable[bool]], wake: asyncio.Event
    ) -> None:
        while self._refusals:
            with suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), self._interval)
            wake.clear()
            await self._sweep(remove)

    async def _sweep(self, remove: Callable[[str], Awaitable[bool]]) -> None:
        for container in list(self._refusals):
            try:
                existed = await remove(container)
            except EngineUnavailable:
                return  # still away: all of them wait for the next round
            except EngineError as exc:  # the engine answered, but no
                self._refused(container, exc)
                continue
            del self._refusals[container]
            if existed:
                log.info("leftover_container_removed", container=container)

    def _refused(self, container: str, exc: EngineError) -> None:
        self._refusals[container] += 1
        if self._refusals[container] < SWEEP_ATTEMPTS:
            log.warning("leftover_container_not_removed", container=container, reason=str(exc))
            return
        del self._refusals[container]
        log.error(
            "leftover_container_given_up",
            container=container,
            reason=str(exc),
            hint=f"remove it by hand: docker rm -f {container}",
        )

    def stop(self) -> None:
        """Stop sweeping (the node is closing); say which containers are left behind."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._refusals:
            log.warning(
                "containers_left_behind",
                containers=sorted(self._refusals),
                hint="the engine did not answer; remove them with docker rm -f",
            )


@dataclass(frozen=True)
class DockerContainer:
    engine: DockerEngine
    id: str
    spec: ContainerSpec

    async def copy_in(self, directory: str, tar: BinaryIO) -> None:
        await self.engine.call("copying the task into the container", _put, self.id, directory, tar)

    async def start(self) -> None:
        await self.engine.call("starting the container", _start, self.id)

    async def wait(self) -> ContainerExit:
        return await self.engine.call("waiting for the container", _wait, self.id)

    async def output(self) -> str:
        raw = await self.engine.call("reading the container's output", _logs, self.id)
        tail = raw[-self.spec.output_bytes :]
        text = tail.decode("utf-8", errors="replace")
        if len(raw) > len(tail):
            text = f"[ulos-py: output cut to its last {len(tail)} of {len(raw)} bytes]\n{text}"
        return text

    async def copy_out(self, path: str, into: BinaryIO, max_bytes: int) -> None:
        await self.engine.call(
            "copying the results out of the container", _get, self.id, path, into, max_bytes
        )


# Blocking docker-py calls, run on the engine's pool.


def _create(api: docker.APIClient, spec: ContainerSpec, name: str) -> str:
    host_config = api.create_host_config(
        network_mode="bridge" if spec.network else "none",
        mem_limit=spec.memory_bytes,
        memswap_limit=spec.memory_bytes,  # no swap: a memory hog is stopped, not slowed
        nano_cpus=spec.nano_cpus,
        pids_limit=spec.pids,
        cap_drop=["ALL"] if spec.drop_capabilities else None,
        security_opt=["no-new-privileges"] if spec.no_new_privileges else None,
        log_config=LogConfig(
            type="json-file", config={"max-size": str(spec.output_bytes), "max-file": "1"}
        ),
    )
    created = api.create_container(
        spec.image,
        name=name,
        command=spec.command,
        user=spec.user,
        environment=spec.environment,
        working_dir=spec.working_dir,
        network_disabled=not spec.network,
        labels={LABEL: "executor", **spec.labels},
        host_config=host_config,
    )
    return str(created["Id"])


def _remove(api: docker.APIClient, container_id: str) -> None:
    with suppress(docker.errors.NotFound):  # already gone is what we wanted
        api.remove_container(container_id, force=True)


def _remove_leftover(api: docker.APIClient, container: str) -> bool:
    try:
        api.remove_container(container, force=True)
    except docker.errors.NotFound:
        return False
    return True


def _put(api: docker.APIClient, container_id: str, directory: str, tar: BinaryIO) -> None:
    tar.seek(0, os.SEEK_END)
    size = tar.tell()
    tar.seek(0)
    # requests streams a file by its descriptor, which would push a small in-memory spool
    # to disk; small tars are sent as bytes instead.
    data: bytes | BinaryIO = tar.read() if size <= IN_MEMORY_TAR else tar
    if not api.put_archive(container_id, directory, data):
        raise EngineError(f"the engine refused the task files at {directory}")


def _start(api: docker.APIClient, container_id: str) -> None:
    api.start(container_id)


def _wait(api: docker.APIClient, container_id: str) -> ContainerExit:
    status = int(api.wait(container_id, timeout=None)["StatusCode"])
    oom_killed = status != 0 and bool(api.inspect_container(container_id)["State"]["OOMKilled"])
    return ContainerExit(status, oom_killed)


def _logs(api: docker.APIClient, container_id: str) -> bytes:
    return bytes(api.logs(container_id, stdout=True, stderr=True))


def _get(
    api: docker.APIClient, container_id: str, path: str, into: BinaryIO, max_bytes: int
) -> None:
    try:
        chunks, _ = api.get_archive(container_id, path, chunk_size=1 << 16)
    except docker.errors.NotFound as exc:
        raise EngineError(f"the container removed its task directory {path}") from exc
    written = 0
    for chunk in chunks:
        written += len(chunk)
        if written > max_bytes:
            raise EngineError(f"the container's task directory is over {max_bytes} bytes")
        into.write(chunk)
    into.seek(0)


async def _to_the_end(cleanup: Awaitable[None]) -> None:
    """Await `cleanup` to completion even if we are cancelled meanwhile, then re-raise that."""
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    task.result()
