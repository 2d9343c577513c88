"""The composition root: builds the adapters, runs deliveries with bounded concurrency,
and shuts down gracefully.

Shutdown: stop taking deliveries, give in-flight tasks `ULOS_SHUTDOWN_GRACE` seconds, then
cancel what remains (the lifecycle hands those back to the queue). Deliveries still waiting
for a free slot were never started; cancelling them leaves them unsettled, and the broker
returns them to the queue when the connection closes.

Cancellations (`ulos_py.adapters.cancellations`) are followed from before the first task
until the pool has drained, so a cancel still stops a task that runs during shutdown.

Metrics (`ulos_py.metrics`) watch from outside: the lifecycle's notices through
`Deps.observe`, the pool's size, and the broker connection's callbacks; with
`ULOS_METRICS_PORT` they are served with the node's health, which is healthy only while
connected and consuming.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any, Literal, Protocol

import structlog
import uvloop

from ulos_py.adapters import rabbitmq, rabbitmq_deliveries
from ulos_py.adapters.cancellations import follow_cancellations
from ulos_py.adapters.docker_engine import DockerEngine
from ulos_py.adapters.ftp import FtpAddress, FtpStorage, RetryPolicy
from ulos_py.archive import ArchiveLimits
from ulos_py.cancellation import CancelBoard, CancellationMemory
from ulos_py.errors import ConfigError, StorageUnavailable
from ulos_py.execution.docker import DockerExecutor
from ulos_py.execution.docker_spec import DockerExecutorSpec
from ulos_py.execution.registry import load_registry
from ulos_py.lifecycle import AckTimeout, Deps, process
from ulos_py.metrics import MetricsServer, NodeMetrics
from ulos_py.ports import Delivery
from ulos_py.reporting import NoticeRoutes, no_observer
from ulos_py.settings import Settings
from ulos_py.workspace import Cleaner

log = structlog.get_logger(__name__)


class TaskPool:
    """Runs deliveries as tasks, at most `limit` at once, and drains them on shutdown."""

    def __init__(self, limit: int, deps: Deps) -> None:
        self._slots = asyncio.Semaphore(limit)
        self._deps = deps
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._run(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, delivery: Delivery) -> None:
        async with self._slots:
            try:
                await process(delivery, self._deps)
            except Exception:  # process settles everything it can; this is a bug of ours
                log.exception("delivery_left_unsettled")

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def drain(self, grace: float) -> None:
        """Wait up to `grace` seconds for running tasks, then cancel the rest."""
        if not self._tasks:
            return
        log.info("draining", in_flight=len(self._tasks), grace_seconds=grace)
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("grace_expired", cancelled=len(pending))
            await asyncio.gather(*pending, return_exceptions=True)


async def run_node(settings: Settings, stop: asyncio.Event) -> None:
    """Consume until `stop` is set, then shut down within the grace period."""
    limits = ArchiveLimits(settings.archive_max_entries, settings.archive_max_bytes)
    metrics = NodeMetrics(settings.node_id, settings.consumption_queue)
    server: MetricsServer | None = None
    # Threads are made on first use: a node with built-in executors only never starts one.
    engine = DockerEngine(threads=settings.concurrency + 4)
    try:
        if settings.metrics_port:  # before the broker: waiting for it is unhealthy, and says so
            server = MetricsServer(metrics, settings.metrics_host, settings.metrics_port)
            log.info("metrics_serving", host=settings.metrics_host, port=server.port)
        await _serve(settings, stop, engine, limits, metrics)
    finally:
        engine.close()
        if server is not None:
            await asyncio.to_thread(server.close)


async def _serve(
    settings: Settings,
    stop: asyncio.Event,
    engine: DockerEngine,
    limits: ArchiveLimits,
    metrics: NodeMetrics,
) -> None:
    def docker_executor(spec: DockerExecutorSpec) -> DockerExecutor:
        return DockerExecutor(spec, engine, settings.node_id, limits)

    registry = load_registry(settings.executors_file, docker_executor)
    connection = await rabbitmq.connect_when_up(
        rabbitmq.BrokerAddress.of(settings, f"ulos-py node {settings.node_id}"), stop
    )
    if connection is None:
        return
    metrics.set_connected(True)
    metrics.set_broker(rabbitmq.current_broker(connection))
    log.info("broker_connected", broker=rabbitmq.current_broker(connection))

    def connection_changed(up: bool) -> None:
        metrics.connection_changed(up)
        broker = rabbitmq.current_broker(connection)
        metrics.set_broker(broker)
        if up:  # with several brokers listed, maybe another one than before
            log.info("broker_reconnected", broker=broker)
        else:
            log.warning("broker_connection_lost", broker=broker)

    unwatch = rabbitmq.watch_connection(connection, connection_changed)
    storage = FtpStorage(
        FtpAddress.of(settings),
        connections=settings.storage_connections,
        retry=RetryPolicy(settings.storage_retries, settings.storage_retry_delay),
    )
    try:
        publisher = await rabbitmq.RabbitPublisher.open(connection)
        for variable, exchange in (
            ("MESSAGE_BROKER_LOGS_EXCHANGE", settings.logs_exchange),
            ("MESSAGE_BROKER_CRASH_EXCHANGE", settings.crash_exchange),
        ):
            if not await publisher.exchange_exists(exchange):
                raise ConfigError(f"{variable}: exchange {exchange!r} does not exist on the broker")
        try:  # wrong credentials or certificate: ConfigError, the node stops here
            await storage.check_login()
        except StorageUnavailable as exc:  # tasks retry, and crash as `download` meanwhile
            log.warning("storage_unreachable", reason=str(exc))
        # Before the first task: one cancelled before the node started must be known to it.
        board = CancelBoard(CancellationMemory(settings.cancel_memory, settings.cancel_retention))
        stop_following = await follow_cancellations(
            connection, settings.cancel_exchange, settings.cancel_stream, board
        )
        queue = await rabbitmq_deliveries.open_queue(
            connection, settings.consumption_queue, settings.prefetch_count
        )
        deps = Deps(
            node_id=settings.node_id,
            publisher=publisher,
            storage=storage,
            executors=registry,
            routes=NoticeRoutes(
                settings.logs_exchange,
                settings.logs_routing_key,
                settings.crash_exchange,
                settings.crash_routing_key,
            ),
            work_dir=settings.work_dir,
            limits=limits,
            requeue_on_reject=settings.requeue_on_reject,
            max_deliveries=settings.max_deliveries,
            ack_timeout=AckTimeout(settings.broker_consumer_timeout, settings.lease_margin),
            cleaner=Cleaner(backlog=settings.concurrency),
            cancellations=board,
            # about 30 µs a task: paid only when someone can scrape the result
            observe=metrics.observer if settings.metrics_port else no_observer,
        )
        pool = TaskPool(settings.concurrency, deps)
        metrics.count_in_flight(lambda: pool.in_flight)
        stop_consuming = await rabbitmq_deliveries.consume(
            connection, queue, publisher, pool.submit, prefetch=settings.prefetch_count
        )
        metrics.set_consuming(True)
        log.info("consuming", queue=settings.consumption_queue, concurrency=settings.concurrency)
        await stop.wait()
        log.info("stopping", in_flight=pool.in_flight)
        metrics.set_consuming(False)
        await stop_consuming()
        await pool.drain(settings.shutdown_grace)  # a cancel still stops a draining task
        await stop_following()
        await deps.cleaner.drain()
    finally:
        metrics.set_consuming(False)
        unwatch()
        await storage.close()
        await connection.close()
        metrics.set_connected(False)
    log.info("stopped")


class LoopChoice(Protocol):
    """Settings that name the event loop (ULOS_EVENT_LOOP): a node's, the tracker's."""

    @property
    def event_loop(self) -> Literal["uvloop", "asyncio"]: ...


def run_event_loop(main: Coroutine[Any, Any, None], settings: LoopChoice) -> None:
    """Run the coroutine on the loop ULOS_EVENT_LOOP names (uvloop by default: the standard
    loop's selector, transports and thread wake-ups cost a node a share of every task's CPU,
    and the tracker a share of every notice's)."""
    factory = uvloop.new_event_loop if settings.event_loop == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(main)


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGTERM and SIGINT ask for a graceful stop."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
