"""The tracker's typed settings: a node's connection variables, where cancellations go
(ULOS_CANCEL_EXCHANGE, for its cancel endpoint) plus ULOS_TRACKER_*."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Literal

from pydantic import Field, SecretStr

from ulos_py.settings import CancelSettings, Port
from ulos_py.tracker.store import DEFAULT_DATABASE


class TrackerSettings(CancelSettings):
    """Everything `ulos-py tracker` reads at start; a bad value stops it with one line."""

    queue: Annotated[str, Field(min_length=1)] = Field(alias="ULOS_TRACKER_QUEUE")
    host: str = Field("127.0.0.1", alias="ULOS_TRACKER_HOST")
    port: Port = Field(8400, alias="ULOS_TRACKER_PORT")
    database: str = Field(DEFAULT_DATABASE, alias="ULOS_TRACKER_DATABASE", repr=False)
    stuck_after_seconds: Annotated[float, Field(gt=0)] = Field(
        600.0, alias="ULOS_TRACKER_STUCK_AFTER"
    )
    """Seconds a task may wait at a stage (or run past its own timeout) before it is stuck."""
    retention_days: Annotated[float, Field(gt=0)] = Field(90.0, alias="ULOS_TRACKER_RETENTION_DAYS")
    token: SecretStr | None = Field(None, alias="ULOS_TRACKER_TOKEN")
    """Bearer token of POST /api/tasks and POST /api/tasks/{id}/cancel (both off without it)."""
    batch_size: Annotated[int, Field(ge=1, le=5000)] = Field(200, alias="ULOS_TRACKER_BATCH")
    batch_wait: Annotated[float, Field(gt=0)] = Field(0.05, alias="ULOS_TRACKER_BATCH_WAIT")
    writer: Literal["auto", "process", "loop"] = Field("auto", alias="ULOS_TRACKER_WRITER")
    """Where notices are folded and written: a process of its own (`process`) or the
    tracker's loop (`loop`); `auto` picks the process for SQLite only (see writes_apart)."""
    output_max_bytes: Annotated[int, Field(ge=1)] = Field(
        1 << 20, alias="ULOS_TRACKER_OUTPUT_MAX_BYTES"
    )
    log_format: Literal["auto", "console", "json"] = Field("auto", alias="ULOS_LOG_FORMAT")
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", alias="ULOS_LOG_LEVEL")
    event_loop: Literal["uvloop", "asyncio"] = Field("uvloop", alias="ULOS_EVENT_LOOP")
    """As a node's: uvloop cuts the loop's own share of every notice's CPU."""

    @property
    def writes_apart(self) -> bool:
        """Whether a writing process of its own stores the notices. SQLite's work runs in the
        tracker's process (aiosqlite's thread, under the same GIL as the loop that consumes):
        a process of its own gives it a core. PostgreSQL's runs in the server's processes
        already; a third process only adds the hand-over (measured: 0.78-0.79 of the bare
        loop against 0.63-0.66 for SQLite, 0.62-0.64 against 0.69-0.71 for PostgreSQL)."""
        if self.writer == "auto":
            return self.database.startswith("sqlite")
        return self.writer == "process"

    @property
    def stuck_after(self) -> timedelta:
        return timedelta(seconds=self.stuck_after_seconds)

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.retention_days)
