"""One node, several worker processes: every core does task work.

A task's per-message path (JSON, zip, TLS, FTP) is Python CPU work, so one asyncio process
uses one core. `ULOS_PROCESSES` workers each run a whole node (`run_node`) with their own
broker and FTP connections and consume the same queue; the broker spreads deliveries by
each worker's prefetch. The supervisor only starts, watches and stops them:

- a worker that dies is replaced (after a back-off if it keeps dying young); the broker
  returns its unacknowledged tasks to the queue, so nothing is lost;
- a worker that stops on a configuration error stops the node with status 2, since the
  others would fail the same way;
- SIGTERM/SIGINT is passed to every worker, which drains within `ULOS_SHUTDOWN_GRACE`;
  a worker still there `KILL_MARGIN` seconds after that is killed;
- a worker whose supervisor disappears (SIGKILL) gets SIGTERM from the kernel and drains.

With `ULOS_METRICS_PORT=P`, worker i serves its own metrics and health on port P + i - 1
(each process counts only its own tasks; Prometheus adds them up).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess

import structlog

from ulos_py.errors import ConfigError, UlosError
from ulos_py.log import configure_logging
from ulos_py.node import install_signal_handlers, run_event_loop, run_node
from ulos_py.orphans import term_when_orphaned
from ulos_py.settings import Settings

log = structlog.get_logger(__name__)

KILL_MARGIN = 10.0
YOUNG = 10.0
"""A worker that dies sooner than this after its start is restarted after a back-off."""
MAX_BACKOFF = 30.0
CONFIG_ERROR = 2
MAX_PORT = 65535


def worker_settings(settings: Settings, index: int, pid: int) -> Settings:
    """Each process its own node id (the default names its pid; a set one gets /w<i>:<pid>)
    and its own metrics port (worker i: ULOS_METRICS_PORT + i - 1)."""
    update: dict[str, object] = {}
    if settings.configured_node_id is not None:
        update["configured_node_id"] = f"{settings.configured_node_id}/w{index}:{pid}"
    if settings.metrics_port:
        update["metrics_port"] = settings.metrics_port + index - 1
    return settings.model_copy(update=update) if update else settings


def check_metrics_ports(settings: Settings) -> None:
    """The workers' metrics ports must all exist: ConfigError names the variable."""
    last = settings.metrics_port + settings.processes - 1
    if settings.metrics_port and last > MAX_PORT:
        raise ConfigError(
            f"ULOS_METRICS_PORT: {settings.processes} worker processes need ports "
            f"{settings.metrics_port} to {last}, past {MAX_PORT}"
        )


def worker_main(settings: Settings, index: int, supervisor_pid: int) -> None:
    """A worker process: one full node until told to stop, or orphaned."""
    settings = worker_settings(settings, index, os.getpid())
    configure_logging(settings.log_format, settings.log_level)
    structlog.contextvars.bind_contextvars(worker=index, node_id=settings.node_id)
    try:
        run_event_loop(_serve(settings, supervisor_pid), settings)
    except ConfigError as exc:
        print(f"ulos-py node worker {index}: configuration error: {exc}", file=sys.stderr)
        sys.exit(CONFIG_ERROR)
    except UlosError as exc:
        print(f"ulos-py node worker {index}: {exc}", file=sys.stderr)
        sys.exit(1)


async def _serve(settings: Settings, supervisor_pid: int) -> None:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    term_when_orphaned()
    if os.getppid() != supervisor_pid:  # it died before we asked to be told
        stop.set()
    await run_node(settings, stop)


@dataclass
class Slot:
    """One worker position: the process in it and how it has been dying."""

    index: int
    process: BaseProcess | None = None
    started: float = 0.0
    young_deaths: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    settings: Settings
    slots: list[Slot] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        self._context = multiprocessing.get_context("spawn")
        self.slots = [Slot(i) for i in range(1, self.settings.processes + 1)]

    def run(self) -> int:
        """Start the workers, keep them running until a signal, then stop them."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._ask_to_stop)
        log.info("supervisor_started", processes=len(self.slots), pid=os.getpid())
        for slot in self.slots:
            self._start(slot)
        status = 0
        while not self.stopping:
            sentinels = [s.process.sentinel for s in self.slots if s.process is not None]
            wait(sentinels, timeout=0.5)
            status = self._tend()
            if status:
                break
        self._stop_all()
        log.info("supervisor_stopped", status=status)
        return status

    def _ask_to_stop(self, signum: int, frame: object) -> None:
        self.stopping = True

    def _start(self, slot: Slot) -> None:
        process = self._context.Process(
            target=worker_main,
            args=(self.settings, slot.index, os.getpid()),
            name=f"ulos-py-worker-{slot.index}",
        )
        process.start()
        slot.process, slot.started, slot.restart_at = process, time.monotonic(), None
        log.info("worker_started", worker=slot.index, pid=process.pid)

    def _tend(self) -> int:
        """Replace dead workers; a non-zero status means the node must stop."""
        now = time.monotonic()
        for slot in self.slots:
            process = slot.process
            if process is not None and not process.is_alive() and not self.stopping:
                code = process.exitcode
                process.close()
                slot.process = None
                if code == CONFIG_ERROR:
                    log.error("worker_config_error", worker=slot.index)
                    return CONFIG_ERROR
                young = now - slot.started < YOUNG
                slot.young_deaths = slot.young_deaths + 1 if young else 0
                delay = min(MAX_BACKOFF, 2.0 ** (slot.young_deaths - 1)) if young else 0.0
                slot.restart_at = now + delay
                log.warning("worker_died", worker=slot.index, exit_code=code, restart_in=delay)
            if slot.process is None and slot.restart_at is not None and now >= slot.restart_at:
                self._start(slot)
        return 0

    def _stop_all(self) -> None:
        running = [s.process for s in self.slots if s.process is not None and s.process.is_alive()]
        for process in running:
            if process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.shutdown_grace + KILL_MARGIN
        for process in running:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.warning("worker_killed", pid=process.pid)
                process.kill()
                process.join()


def run_supervised(settings: Settings) -> int:
    check_metrics_ports(settings)
    return Supervisor(settings).run()
