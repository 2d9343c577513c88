"""In-memory doubles of the ports in `ulos_py.ports`, injected instead of monkeypatched.

Each double records what the lifecycle did to it, so tests assert on values, not on calls.
A shared `journal` list, when given, records the order of side effects across doubles
(for example that the forward was confirmed before the ack).
"""

from __future__ import annotations

import asyncio
import io
import tarfile
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ulos_py.errors import (
    ConnectionLost,
    PublishError,
    SettleFailed,
    StorageRefused,
    StorageUnavailable,
)
from ulos_py.execution.containers import ContainerExit, ContainerSpec
from ulos_py.models import Outcome, RoutingNode
from ulos_py.ports import BlockReader, Envelope, ExecutionResult, TaskFiles, TimeoutPolicy
from ulos_py.zip_stream import ZipPlan

Route = tuple[str, str]


class FakeDelivery:
    """A delivery that must be settled exactly once; a second settle is a test failure."""

    def __init__(
        self,
        body: bytes,
        priority: int | None = None,
        redelivered: bool = False,
        *,
        settle_fails: bool = False,
        journal: list[str] | None = None,
        delivery_count: int | None = None,
        lease: bool | None = True,
    ) -> None:
        self.body = body
        # as the broker adapter counts: a redelivery without our header is the second
        self.delivery_count = delivery_count or (2 if redelivered else 1)
        self.priority = priority
        self.settle_fails = settle_fails
        self.acked = False
        self.rejected = False
        self.requeue: bool | None = None
        self.put_back = False
        """A counted copy went back to the queue (`put_back_counted`)."""
        self.settle_attempts = 0
        self._journal = journal if journal is not None else []
        self.grants_lease = lease
        """What `lease` does: True takes the lease, False is refused, None loses the delivery."""
        self.leased: float | None = None
        self.lost = False
        """Set by a test to say the delivery went with the broker connection."""

    @property
    def settled(self) -> bool:
        return self.acked or self.rejected

    def _attempt(self, what: str) -> None:
        self.settle_attempts += 1
        if self.settle_attempts > 1:
            raise AssertionError(f"delivery settled twice (second settle: {what})")
        self._journal.append(what)
        if self.settle_fails:
            raise SettleFailed(f"channel closed before {what}")

    async def ack(self) -> None:
        self._attempt("ack")
        self.acked = True

    async def reject(self, requeue: bool) -> None:
        self._attempt("reject")
        self.rejected = True
        self.requeue = requeue

    async def put_back_counted(self) -> None:
        """Not a settle: the counted copy the lifecycle acks the delivery after."""
        if self.settled or self.put_back:
            raise AssertionError("put back after a settle, or twice")
        self._journal.append("put_back_counted")
        if self.settle_fails:
            raise SettleFailed("channel closed before the counted copy was confirmed")
        self.put_back = True

    async def lease(self, seconds: float) -> bool:
        """Not a settle: the lease is settled later by ack or reject, exactly once."""
        if self.leased is not None or self.settled:
            raise AssertionError("lease after a lease or a settle")
        self._journal.append(f"lease {seconds:g}")
        if self.grants_lease is None:
            raise SettleFailed("channel closed while leasing")
        if self.grants_lease:
            self.leased = seconds
        return self.grants_lease


class FakePublisher:
    """Records every confirmed envelope per (exchange, routing key)."""

    def __init__(
        self,
        failing: set[Route] | None = None,
        *,
        confirm_delay: float = 0.0,
        journal: list[str] | None = None,
        connection_lost: bool = False,
    ) -> None:
        self.failing: set[Route] = set(failing or ())
        self.connection_lost = connection_lost
        """A publish on a failing route fails as the broker connection going does."""
        self.confirm_delay = confirm_delay
        self.published: defaultdict[Route, list[Envelope]] = defaultdict(list)
        self.refused: list[Envelope] = []
        self._journal = journal if journal is not None else []

    async def publish(self, envelope: Envelope) -> None:
        await asyncio.sleep(self.confirm_delay)  # a broker confirm is never instant
        route = (envelope.exchange, envelope.routing_key)
        if route in self.failing:
            self.refused.append(envelope)
            if self.connection_lost:
                raise ConnectionLost("broker connection lost") from ConnectionResetError()
            raise PublishError(f"exchange {envelope.exchange!r} refused the publish")
        self.published[route].append(envelope)
        self._journal.append(f"publish {envelope.exchange}/{envelope.routing_key}")

    def to(self, exchange: str, routing_key: str) -> list[Envelope]:
        """What was confirmed on one route (without creating an entry for it)."""
        return list(self.published.get((exchange, routing_key), []))

    @property
    def routes(self) -> set[Route]:
        return {route for route, envelopes in self.published.items() if envelopes}


class FakeStorage:
    """Remote path → bytes; a missing path is refused, uploads may be made to fail."""

    def __init__(
        self, files: dict[str, bytes] | None = None, *, fail_uploads: bool = False
    ) -> None:
        self.files: dict[str, bytes] = dict(files or {})
        self.fail_uploads = fail_uploads
        self.downloads: list[str] = []
        self.uploads: list[str] = []

    async def download(
        self, remote_path: str, local_file: Path, reader: BlockReader | None = None
    ) -> None:
        if remote_path not in self.files:
            raise StorageRefused(f"550 {remote_path}: no such file")
        await asyncio.to_thread(local_file.write_bytes, self.files[remote_path])
        if reader is not None:
            reader.start()
            reader.feed(self.files[remote_path])
        self.downloads.append(remote_path)

    async def upload(self, local_file: Path | ZipPlan, remote_path: str) -> None:
        if self.fail_uploads:
            raise StorageUnavailable("421 service not available")
        self.files[remote_path] = await asyncio.to_thread(local_file.read_bytes)
        self.uploads.append(remote_path)


class SleepingExecutor:
    """Never decides; records that it started and whether it was cancelled."""

    def __init__(
        self, name: str = "sleeper", on_timeout: TimeoutPolicy = TimeoutPolicy.CRASH
    ) -> None:
        self.name = name
        self.on_timeout = on_timeout
        self.started = asyncio.Event()
        self.cancelled = False
        self.workdir: Path | None = None

    async def run(self, files: TaskFiles, stage: RoutingNode) -> ExecutionResult:
        self.workdir = await files.directory()
        self.started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        raise AssertionError("unreachable: the event is never set")


class FileWritingExecutor:
    """Asks for a working directory (as an executor that needs one does), writes one file
    into it and decides `outcome`.

    Records the relative paths it found in the working directory (`seen` for the last run,
    `listings` for all), so tests can see what the submission was unpacked to.
    """

    def __init__(
        self,
        file_name: str = "result.txt",
        content: str = "graded: 10/10\n",
        outcome: Outcome = Outcome.PASS,
        name: str = "writer",
    ) -> None:
        self.name = name
        self.on_timeout = TimeoutPolicy.CRASH
        self.file_name = file_name
        self.content = content
        self.outcome = outcome
        self.seen: list[str] = []
        self.listings: list[list[str]] = []
        self.workdirs: list[Path] = []

    async def run(self, files: TaskFiles, stage: RoutingNode) -> ExecutionResult:
        workdir = await files.directory()
        self.workdirs.append(workdir)
        self.seen = await asyncio.to_thread(_listing, workdir)
        self.listings.append(self.seen)
        await asyncio.sleep(0)  # let concurrent tasks interleave
        await asyncio.to_thread((workdir / self.file_name).write_text, self.content, "utf-8")
        return ExecutionResult(self.outcome, f"wrote {self.file_name}\n")


def _listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


class RaisingExecutor:
    """Fails the way a buggy executor would: with an exception that is not ours."""

    name = "raiser"
    on_timeout = TimeoutPolicy.CRASH

    async def run(self, files: TaskFiles, stage: RoutingNode) -> ExecutionResult:
        raise RuntimeError("executor bug")


def zip_bytes(entries: dict[str, bytes | str]) -> bytes:
    """A zip of the given entries (a name ending in '/' is a directory)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def zip_names(data: bytes) -> dict[str, bytes]:
    """The entries of a zip held in memory, name → content."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()}


Program = Callable[[Path], Awaitable[int]]
"""What a fake container does in its mount directory; returns the exit status."""


class FakeEngine:
    """A container engine in a temp folder: the archive API is real tar, the run is `program`.

    Counts containers created and removed, so tests see that none outlives its task.
    """

    def __init__(self, program: Program, output: str = "container says hi\n") -> None:
        self.program = program
        self.output = output
        self.specs: list[ContainerSpec] = []
        self.created = 0
        self.removed = 0

    @property
    def live(self) -> int:
        return self.created - self.removed

    @asynccontextmanager
    async def container(self, spec: ContainerSpec) -> AsyncIterator[FakeContainer]:
        self.specs.append(spec)
        self.created += 1
        with tempfile.TemporaryDirectory() as root:
            try:
                yield FakeContainer(self, Path(root), spec)
            finally:
                self.removed += 1


@dataclass
class FakeContainer:
    engine: FakeEngine
    root: Path
    spec: ContainerSpec
    status: int | None = None

    async def copy_in(self, directory: str, tar: BinaryIO) -> None:
        with tarfile.open(fileobj=tar) as archive:
            archive.extractall(self.root / directory.lstrip("/"), filter="tar")

    async def start(self) -> None:
        pass

    async def wait(self) -> ContainerExit:
        self.status = await self.engine.program(self.root / self.spec.working_dir.lstrip("/"))
        return ContainerExit(self.status, oom_killed=False)

    async def output(self) -> str:
        return self.engine.output

    async def copy_out(self, path: str, into: BinaryIO, max_bytes: int) -> None:
        source = self.root / path.lstrip("/")
        with tarfile.open(fileobj=into, mode="w") as archive:
            archive.add(source, arcname=source.name)
        into.seek(0)
