"""The small interfaces the lifecycle needs from the outside world.

The lifecycle sees only these; adapters (RabbitMQ, FTP, Docker) and in-memory test doubles
implement them, so a task's life can be read and tested without any library in sight.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

from ulos_py.models import Outcome, RoutingNode
from ulos_py.zip_stream import TarResults, ZipPlan


class Delivery(Protocol):
    """One message taken from the queue, to be settled exactly once."""

    @property
    def body(self) -> bytes: ...

    @property
    def priority(self) -> int | None: ...

    @property
    def lost(self) -> bool:
        """True once the delivery went with the broker connection (a broker restart, a
        cluster node going away): it can no longer be settled and the broker hands the task
        out again, so whatever stopped it is not the task's end (SPEC §3)."""

    async def ack(self) -> None:
        """Raises SettleFailed when the broker can no longer take it."""

    async def reject(self, requeue: bool) -> None:
        """Raises SettleFailed when the broker can no longer take it."""

    @property
    def delivery_count(self) -> int:
        """1 the first time; counted across requeues (see `put_back_counted`)."""

    async def put_back_counted(self) -> None:
        """Publish a copy of the task to the tail of its queue with its delivery count
        raised, confirmed by the broker; raises SettleFailed. Not a settle: the lifecycle
        acks the delivery once the copy is safe. A plain requeue cannot be counted on a
        classic queue, and a task that crashes every time would loop for ever."""

    async def lease(self, seconds: float) -> bool:
        """Take the task off the broker's delivery-acknowledgement clock, for a task that may
        run longer than the broker's consumer timeout (which would close the channel under it
        and hand it to another node while it still runs).

        The task is then held by a lease of `seconds`: if the node dies, the broker gives the
        task back to its queue when the lease runs out; while the node lives, `ack` and
        `reject` settle the lease as they would the delivery. False when no
        lease could be taken (the delivery is as it was); raises SettleFailed when the
        delivery was lost meanwhile (the broker delivers it again: the task must stop)."""


@dataclass(frozen=True)
class Envelope:
    """A JSON body and where it goes."""

    exchange: str
    routing_key: str
    body: dict[str, Any]
    message_id: str | None = None
    correlation_id: str | None = None
    priority: int | None = None


class Publisher(Protocol):
    async def publish(self, envelope: Envelope) -> None:
        """Return once the broker confirmed it as routed; raise PublishError otherwise."""


class BlockReader(Protocol):
    """Takes a download's bytes as they are written (a zip checked on the way)."""

    def start(self) -> None:
        """The download starts (again) from its first byte."""

    def feed(self, block: bytes | bytearray) -> None:
        """The next bytes, in order; called in a worker thread."""


class Storage(Protocol):
    async def download(
        self, remote_path: str, local_file: Path, reader: BlockReader | None = None
    ) -> None:
        """Raise StorageRefused or StorageUnavailable (after the adapter's own retries).
        `reader` is given every byte written, in order."""

    async def upload(self, local_file: Path | ZipPlan, remote_path: str) -> None:
        """Replace `remote_path` with the file (or the zip the plan makes), never leaving a
        half-written one there."""


class TimeoutPolicy(StrEnum):
    """What a timeout means for an executor's stage."""

    CRASH = "crash"
    """The task crashes with kind `timeout`; nothing is uploaded."""
    FAIL = "fail"
    """The timeout counts as a FAIL: results are uploaded and the failure branch follows."""


@dataclass(frozen=True)
class ExecutionResult:
    """An executor's decision and what it printed."""

    outcome: Outcome
    output: str


class TaskFiles(Protocol):
    """A task's submission, in the form its executor asks for. Untouched, it is never
    unpacked: the stage's output is added to the zip as it came (SPEC §3 checks done)."""

    async def directory(self) -> Path:
        """The files unpacked to a folder the executor may change; what it leaves there is
        what gets uploaded."""

    async def tar_for(self, mount: PurePosixPath, owner: tuple[int, int]) -> BinaryIO:
        """The files as a tar stream of the folder `mount.name`, every entry owned by
        `owner` (uid, gid), to be put at `mount.parent`."""

    async def take_tar(self, stream: BinaryIO, marker: PurePosixPath | None) -> TarResults:
        """The files become the tar stream of a folder (a container's results), checked as
        untrusted, less `marker`; raises ExecutionCrashed."""


class Executor(Protocol):
    """Runs one stage on a task's files.

    `run` is cancelled when the task times out or the node shuts down; it must stop its work
    before the cancellation propagates. It raises ExecutionCrashed for a crash.
    """

    @property
    def name(self) -> str: ...

    @property
    def on_timeout(self) -> TimeoutPolicy: ...

    async def run(self, files: TaskFiles, stage: RoutingNode) -> ExecutionResult: ...


class ExecutorRegistry(Protocol):
    def select(self, routing_key: str) -> Executor | None:
        """The first executor whose pattern matches the stage, or None."""
