"""Every failure ulos-py names, so that callers catch meaning rather than library types.

    UlosError
    ├── ConfigError              a setting is missing or bad; the node refuses to start
    ├── StorageError             the FTP server failed us (adapter level)
    │   ├── StorageUnavailable   transient: worth a retry with back-off
    │   └── StorageRefused       permanent: missing file, bad credentials, no permission
    ├── EngineError              the Docker engine failed or refused an operation (adapter level)
    │   ├── EngineUnavailable    the engine does not answer
    │   ├── ImageMissing         the executor's image is not on the engine
    │   └── ImageBuildFailed     an executor image did not build (`ulos-py executors build`)
    ├── BrokerUnavailable        the broker cannot be reached
    ├── ExchangeMissing          an exchange to watch is not declared on the broker
    ├── PublishError             the broker did not confirm a publish (adapter level)
    │   └── ConnectionLost       ... because the connection went: its deliveries went too
    ├── SettleFailed             an ack/reject did not reach the broker (it will redeliver)
    ├── StoreUnavailable         the tracker's database (or its writing process) took no batch
    └── TaskCrash                a task ended without an outcome; `kind` is SPEC §4 `error.kind`
        ├── MalformedTask        not JSON, or breaks SPEC §2 (carries raw body and errors)
        ├── NoRouting            the task has no routing tree
        ├── NoExecutor           no executor matches the stage
        ├── DownloadFailed
        ├── UnsafeArchive        not a zip, or escapes, links, or over the limits
        ├── ExecutionCrashed
        ├── ExecutionTimedOut
        ├── UploadFailed
        ├── ForwardFailed        the next stage could not be delivered
        └── TaskCancelled        an operator cancelled it (carries who, why and when)

Adapters raise StorageError/PublishError/EngineError; the lifecycle (or, for the engine, the
docker executor) turns them into the TaskCrash of the step that failed, chained, so the
notice names both the step and the cause. The same engine error outside a task (building
images) is reported as what it is, not as a task's crash.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


def one_line(exc: BaseException) -> str:
    """Why an error happened, for a log line: its message's first line, or its type's name."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else type(exc).__name__


class CrashKind(StrEnum):
    """SPEC §4 `error.kind`: why a task ended without an outcome."""

    MALFORMED = "malformed"
    """The body is not JSON or breaks the message format."""
    NO_ROUTING = "no_routing"
    """The task carries no routing tree, so there is no current stage."""
    NO_EXECUTOR = "no_executor"
    """No executor in the registry matches the stage's routing key."""
    DOWNLOAD = "download"
    """The task's zip could not be fetched from storage."""
    ARCHIVE = "archive"
    """The file is not a zip, or unpacking it would be unsafe."""
    EXECUTION = "execution"
    """The executor itself failed (not a controlled FAIL)."""
    TIMEOUT = "timeout"
    """The execution took longer than the task's timeout and was stopped."""
    UPLOAD = "upload"
    """The results could not be stored back."""
    FORWARD = "forward"
    """The next stage could not be delivered."""
    CANCELLED = "cancelled"
    """An operator cancelled the task (`ulos-py cancel`, the tracker): it is acked, never
    requeued."""


class UlosError(Exception):
    """Base of every error ulos-py raises on purpose."""


class ConfigError(UlosError):
    """A setting is missing or invalid; the message names the variable."""


class StorageError(UlosError):
    """The remote storage failed an operation."""


class StorageUnavailable(StorageError):
    """The storage could not be reached or dropped us: a retry may help."""


class StorageRefused(StorageError):
    """The storage answered no (missing file, credentials, permission): retrying won't help."""


class EngineError(UlosError):
    """The Docker engine failed or refused an operation; the docker executor turns it into
    the task's ExecutionCrashed."""


class EngineUnavailable(EngineError):
    """The Docker engine did not answer; the node goes on and tries again with the next task."""


class ImageMissing(EngineError):
    """The executor's image is not on the engine: `ulos-py executors build` makes it."""


class ImageBuildFailed(EngineError):
    """An executor image did not build: its Dockerfile, its files or the base image."""


class BrokerUnavailable(UlosError):
    """The broker did not answer or dropped the connection."""


class ExchangeMissing(UlosError):
    """An exchange to watch is not on the broker.

    Not a ConfigError (exit status 2): the setting may be right and the deployment not yet
    declared, so `ulos-py watch` reports it as a failed operation (exit status 1).
    """


class PublishError(UlosError):
    """The broker refused, returned or never confirmed a publish."""


class TaskCrash(UlosError):
    """A task ended without an outcome; `kind` goes into the crash notice."""

    kind: CrashKind = CrashKind.EXECUTION

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class MalformedTask(TaskCrash):
    kind = CrashKind.MALFORMED

    def __init__(
        self,
        detail: str,
        raw_body: bytes,
        errors: list[dict[str, Any]],
        received: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.raw_body = raw_body
        self.errors = errors
        self.received = received
        """The body's JSON object when it is one, so the notice can carry its fields."""


class NoRouting(TaskCrash):
    kind = CrashKind.NO_ROUTING


class NoExecutor(TaskCrash):
    kind = CrashKind.NO_EXECUTOR


class DownloadFailed(TaskCrash):
    kind = CrashKind.DOWNLOAD


class UnsafeArchive(TaskCrash):
    kind = CrashKind.ARCHIVE


class ExecutionCrashed(TaskCrash):
    kind = CrashKind.EXECUTION


class ExecutionTimedOut(TaskCrash):
    kind = CrashKind.TIMEOUT


class UploadFailed(TaskCrash):
    kind = CrashKind.UPLOAD


class ForwardFailed(TaskCrash):
    kind = CrashKind.FORWARD


class TaskCancelled(TaskCrash):
    """Cancelled by `by` for `reason` at `at` (RFC 3339); the notice carries all three."""

    kind = CrashKind.CANCELLED

    def __init__(self, detail: str, by: str, reason: str, at: str) -> None:
        super().__init__(detail)
        self.by = by
        self.reason = reason
        self.at = at


class ConnectionLost(PublishError):
    """The broker connection went while publishing. The deliveries taken on it went with it:
    the broker hands them out again, so a task whose forward failed this way is interrupted,
    not crashed (SPEC §3)."""


class SettleFailed(UlosError):
    """An ack or reject could not reach the broker; it will redeliver the message."""


class StoreUnavailable(UlosError):
    """The tracker's database (or the process writing to it) did not take a batch; why, in
    one line. Nothing of the batch is acked: it is tried again."""
