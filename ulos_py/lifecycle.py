"""A task's whole life, top to bottom: the only place that decides how a delivery is settled.

    parse → stage → executor → download → check → execute → add output → upload → forward → ack

Any step may raise a TaskCrash; `process` turns it into a crash notice and a reject (or,
with MESSAGE_BROKER_REQUEUE_ON_REJECT, a counted requeue until ULOS_MAX_DELIVERIES: a
counted copy back on the queue, then the ack). A cancellation of the asyncio task (node
shutdown) is not a failure: the delivery goes back to the queue; nor is an interruption (the
broker connection lost mid-task): the broker hands the task out again. An operator's cancel
of the task (`ulos_py.cancellation`) is another thing: from its receipt to the end of its
execution the task runs in a cancel scope, which stops it with TaskCancelled; that crash is
acked, never requeued, since nobody wants the task any more.

A task that may run longer than the broker lets a delivery go unacknowledged is leased
(`Delivery.lease`) before it executes, so the broker cannot close the channel under it and
hand it to another node; the lease is settled like the delivery would have been.

Two broker acks/rejects happen in the adapter (rabbitmq_deliveries), and must:
- taking a lease acks the delivery. That ack ends no task: it hands the task over to its
  lease, and is valid only between broker steps the lifecycle does not see (after the copy
  in the lease queue is confirmed and the prefetch window narrowed; if it fails the lease
  queue must go). The lifecycle settles the lease later, with `ack` or `reject`, which the
  adapter turns into deleting the lease or publishing a copy back first.
- the consumer rejects a copy marked `x-ulos-rejected` without handing it on. It is the end
  of a reject for good that a lifecycle already decided and reported for a leased task (whose
  own delivery was gone, so it cannot be dead-lettered directly); handed on, it would run
  as a new task.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from ulos_py.archive import ArchiveLimits
from ulos_py.cancellation import CancelBoard, CancelScope
from ulos_py.errors import (
    ConnectionLost,
    DownloadFailed,
    ExecutionCrashed,
    ExecutionTimedOut,
    ForwardFailed,
    MalformedTask,
    NoExecutor,
    PublishError,
    SettleFailed,
    StorageError,
    TaskCancelled,
    TaskCrash,
    UploadFailed,
)
from ulos_py.models import Outcome, RoutingNode, Task, parse_task
from ulos_py.notices import DeliveryBudget, Event, NoticeContext
from ulos_py.ports import (
    Delivery,
    Envelope,
    ExecutionResult,
    Executor,
    ExecutorRegistry,
    Publisher,
    Storage,
    TaskFiles,
    TimeoutPolicy,
)
from ulos_py.reporting import NoticeObserver, NoticeRoutes, Reporter, no_observer
from ulos_py.routing import (
    current_stage,
    forward_body,
    forward_message_id,
    next_hop,
    output_file_name,
)
from ulos_py.workspace import Cleaner, Workspace, workspace

log = structlog.get_logger(__name__)

INTERRUPTION_CHECKS = 20
INTERRUPTION_CHECK_SECONDS = 0.05
"""After a publish failed on a lost connection, how long (20 times 50 ms) the delivery's own
channel gets to be seen closed."""


@dataclass(frozen=True)
class AckTimeout:
    """The broker's consumer (delivery acknowledgement) timeout as the node knows it
    (ULOS_BROKER_CONSUMER_TIMEOUT), and the time a task needs besides its execution for
    download, upload and forward (ULOS_LEASE_MARGIN)."""

    seconds: float = 0.0
    """0: the broker has none."""
    margin: float = 300.0

    def lease_for(self, task_timeout: float) -> float | None:
        """How long to lease a task allowed `task_timeout` seconds of execution; None when
        it ends within the broker's timeout anyway."""
        needed = task_timeout + self.margin
        if self.seconds <= 0 or needed < self.seconds:
            return None
        return needed


@dataclass(frozen=True)
class Deps:
    """Everything a task's life needs from the node, injected so tests can use doubles."""

    node_id: str
    publisher: Publisher
    storage: Storage
    executors: ExecutorRegistry
    routes: NoticeRoutes
    work_dir: Path
    limits: ArchiveLimits = field(default_factory=ArchiveLimits)
    requeue_on_reject: bool = False
    max_deliveries: int = 5
    observe: Callable[[], NoticeObserver] = no_observer
    """A watcher of each delivery's notices (the node's metrics); nobody by default."""
    ack_timeout: AckTimeout = field(default_factory=AckTimeout)
    cleaner: Cleaner = field(default_factory=Cleaner)
    """Removes finished workspaces in the background; the node drains it before exiting."""
    cancellations: CancelBoard = field(default_factory=CancelBoard)
    """The cancellations the node knows, fed from the broker (nobody cancels by default)."""


async def process(delivery: Delivery, deps: Deps) -> None:
    """Run one delivery to its end and settle it exactly once."""
    context = NoticeContext(deps.node_id, received={})
    report = Reporter(deps.publisher, deps.routes, context, deps.observe())
    async with AsyncExitStack() as after_settling:  # the workspace goes once the task is settled
        await _run_and_settle(delivery, deps, report, after_settling)
    await report.flush()


async def _run_and_settle(
    delivery: Delivery, deps: Deps, report: Reporter, after_settling: AsyncExitStack
) -> None:
    try:
        received, task = parse_task(delivery.body)
        report.carry_task(received, task.routing_tree)
        count = delivery.delivery_count
        note = f" (redelivered, delivery {count})" if count > 1 else ""
        report.log(Event.RECEIVED, f"task {task.task_id} received{note}", redelivered=count > 1)
        async with deps.cancellations.scope(task.task_id) as scope:  # a cancelled one stops here
            stage = current_stage(task)
            executor = deps.executors.select(stage.routing_key)
            if executor is None:
                raise NoExecutor(f"no executor matches stage {stage.routing_key!r}")
            space = await after_settling.enter_async_context(
                workspace(deps.work_dir, task.task_id, deps.cleaner)
            )
            await _run_stage(received, task, stage, executor, space, delivery, deps, report, scope)
    except TaskCrash as crash:
        if isinstance(crash, MalformedTask) and crash.received is not None:
            report.carry_task(crash.received, stage=None)
        await _settle_crash(delivery, deps, report, crash)
    except asyncio.CancelledError:
        await asyncio.shield(_hand_back_unfinished(delivery, report))
        raise
    except SettleFailed as exc:  # lost while being leased: the broker delivers it again
        log.warning("delivery_lost", reason=str(exc))
    except Exception as exc:  # a bug of ours must not kill the node or lose the task
        log.exception("internal_error")
        internal = ExecutionCrashed(f"internal error in the node: {exc!r}")
        await _settle_crash(delivery, deps, report, internal)
    else:
        await report.flush()
        await _settle(delivery.ack(), report, Event.ACKED)


async def _run_stage(
    received: dict[str, Any],
    task: Task,
    stage: RoutingNode,
    executor: Executor,
    space: Workspace,
    delivery: Delivery,
    deps: Deps,
    report: Reporter,
    scope: CancelScope,
) -> None:
    try:
        reader = space.files.scan(deps.limits)
        await deps.storage.download(task.file_path, space.archive, reader)
    except StorageError as exc:
        raise DownloadFailed(f"cannot download {task.file_path}: {exc}") from exc
    await space.files.check(deps.limits)
    report.log(Event.DOWNLOADED, f"downloaded and checked {task.file_path}")
    await _lease_if_long(task, delivery, deps, report)

    report.log(Event.EXECUTION_STARTED, f"executor {executor.name} started")
    result = await _execute(executor, space.files, stage, task.timeout)
    scope.close()  # a cancel from here on stops the task at its next stage
    report.log(
        Event.EXECUTION_FINISHED,
        f"executor {executor.name} finished: {result.outcome.value}",
        outcome=result.outcome.value,
    )

    try:
        results = await space.files.seal(output_file_name(stage), result.output)
        await deps.storage.upload(results, task.file_path)
    except (StorageError, OSError) as exc:
        raise UploadFailed(f"cannot upload {task.file_path}: {exc}") from exc
    report.log(Event.UPLOADED, f"uploaded results to {task.file_path}")

    await _forward(received, task, stage, result.outcome, delivery.priority, deps, report)


async def _forward(
    received: dict[str, Any],
    task: Task,
    stage: RoutingNode,
    outcome: Outcome,
    priority: int | None,
    deps: Deps,
    report: Reporter,
) -> None:
    """The task as received goes on to the stage its outcome leads to, if any."""
    hop = next_hop(stage, outcome)
    if hop is None:
        report.log(Event.COMPLETED, f"no stage follows {outcome.value}: journey ends here")
        return
    target = f"exchange {hop.exchange!r} routing key {hop.routing_key!r}"
    envelope = Envelope(
        hop.exchange,
        hop.routing_key,
        forward_body(received, hop),
        message_id=forward_message_id(task, stage, outcome),
        correlation_id=task.task_id,
        priority=priority,
    )
    # The notices so far are confirmed while the forward is: one round trip, not two.
    notices = asyncio.ensure_future(report.flush())
    try:
        await deps.publisher.publish(envelope)
    except PublishError as exc:
        raise ForwardFailed(f"cannot forward to {target}: {exc}") from exc
    finally:
        await notices
    report.log(Event.FORWARDED, f"forwarded to {target}", target=hop.wire())


async def _lease_if_long(task: Task, delivery: Delivery, deps: Deps, report: Reporter) -> None:
    """Lease a task that may outlast the broker's consumer timeout (see `Delivery.lease`)."""
    seconds = deps.ack_timeout.lease_for(task.timeout)
    if seconds is None:
        return
    limit = f"{deps.ack_timeout.seconds:g} s"
    if await delivery.lease(seconds):
        report.log(
            Event.LEASED,
            f"may run past the broker's consumer timeout ({limit}): leased for {seconds:g} s",
            leaseSeconds=seconds,
        )
    else:  # the task goes on; should it outlast the timeout, the broker hands it out again
        log.warning("running_unleased", task_id=task.task_id, consumer_timeout=limit)


async def _execute(
    executor: Executor, files: TaskFiles, stage: RoutingNode, seconds: float
) -> ExecutionResult:
    """Run the executor under the task's timeout; its work is stopped when time runs out."""
    if seconds <= 0:
        return _timed_out(executor, seconds)
    deadline = asyncio.timeout(seconds)
    try:
        async with deadline:
            return await executor.run(files, stage)
    except TimeoutError as exc:
        if deadline.expired():
            return _timed_out(executor, seconds)
        raise ExecutionCrashed(f"executor {executor.name} failed: {exc!r}") from exc
    except TaskCrash:
        raise
    except Exception as exc:
        raise ExecutionCrashed(f"executor {executor.name} failed: {exc!r}") from exc


def _timed_out(executor: Executor, seconds: float) -> ExecutionResult:
    message = f"execution timed out after {seconds:g} s"
    if executor.on_timeout is TimeoutPolicy.FAIL:
        return ExecutionResult(Outcome.FAIL, message)
    raise ExecutionTimedOut(message)


async def _settle_crash(delivery: Delivery, deps: Deps, report: Reporter, crash: TaskCrash) -> None:
    """A crashed task is rejected for good, or, with MESSAGE_BROKER_REQUEUE_ON_REJECT and
    deliveries left in its budget, requeued (counted).

    A malformed message is never requeued: it cannot get better. A cancelled task is acked:
    nobody wants it any more, so it goes neither back nor to the dead letters. A delivery
    lost with the broker connection is neither: the broker hands it out again, so a crash
    notice would tell its sender of an end the task never had (a failed forward is what the
    lost connection looks like from here).
    """
    if isinstance(crash, TaskCancelled):
        report.crash(crash)
        await _settle(delivery.ack(), report, Event.ACKED)
        return
    if await _interrupted(delivery, crash):
        task_id = report.context.received.get("taskId")
        log.warning("task_interrupted", task_id=task_id, reason=crash.detail)
        return
    if not deps.requeue_on_reject or isinstance(crash, MalformedTask):
        report.crash(crash)
        await _settle(delivery.reject(False), report, Event.REJECTED, requeued=False)
        return
    budget = DeliveryBudget(delivery.delivery_count, deps.max_deliveries)
    report.crash(crash, budget)
    if budget.spent:
        await _settle(delivery.reject(False), report, Event.REJECTED, requeued=False)
    else:
        await _settle(_requeue_counted(delivery), report, Event.REJECTED, requeued=True)


async def _requeue_counted(delivery: Delivery) -> None:
    """A counted copy goes to the tail of the queue, then the delivery is acked; a copy the
    broker did not confirm is no ack (the broker delivers the task again)."""
    await delivery.put_back_counted()
    await delivery.ack()


async def _interrupted(delivery: Delivery, crash: TaskCrash) -> bool:
    """Whether the crash is the broker connection going, with the delivery.

    A publish fails on the lost connection a moment before the consuming channel is seen
    closed, so after such a failure the delivery gets that moment (a live channel means the
    crash was real)."""
    if delivery.lost:
        return True
    if not isinstance(crash.__cause__, ConnectionLost):
        return False
    for _ in range(INTERRUPTION_CHECKS):
        await asyncio.sleep(INTERRUPTION_CHECK_SECONDS)
        if delivery.lost:
            return True
    return False


async def _settle(
    settling: Awaitable[None], report: Reporter, event: Event, **fields: object
) -> None:
    try:
        await settling
    except SettleFailed as exc:
        log.warning("settle_failed", reason=str(exc))
        return
    verb = "acknowledged" if event is Event.ACKED else "rejected"
    report.log(event, f"delivery {verb}", **fields)


async def _hand_back_unfinished(delivery: Delivery, report: Reporter) -> None:
    """On shutdown, hand an unfinished delivery back so another node can take it."""
    # If the channel is gone the broker requeues unacked messages by itself.
    with suppress(SettleFailed):
        await delivery.reject(requeue=True)
    report.log(Event.REJECTED, "node shutting down: task returned to the queue", requeued=True)
    await report.flush()
