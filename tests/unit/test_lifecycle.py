"""The lifecycle on in-memory doubles: one test (at least) per row of SPEC §3."""

from __future__ import annotations

import asyncio
import io
import re
import stat
import zipfile
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.fakes import (
    FakeDelivery,
    FileWritingExecutor,
    RaisingExecutor,
    SleepingExecutor,
    zip_bytes,
    zip_names,
)
from tests.support.lifecycle_node import (
    EXCHANGE,
    FAILURE,
    FILE,
    LOGS,
    NODE_ID,
    SUBMISSION,
    SUCCESS,
    SUCCESS_ROUTE,
    TASK_ID,
    Node,
    encode,
    make_node,
    only,
    task,
)
from ulos_py.archive import ArchiveLimits
from ulos_py.execution.builtin import Behaviour, BuiltinExecutor
from ulos_py.lifecycle import process
from ulos_py.models import Outcome, RoutingNode
from ulos_py.ports import ExecutionResult, TaskFiles, TimeoutPolicy
from ulos_py.routing import output_file_name

FAILURE_ROUTE = ("results", "lab.failed")

HAPPY_EVENTS = ["received", "downloaded", "execution_started", "execution_finished", "uploaded"]


def assert_crash(node: Node, kind: str, *, stage: str | None = "pass") -> dict[str, Any]:
    """Exactly one crash notice of `kind`, carrying the task and the stage; returns it."""
    [notice] = node.crashes()
    assert notice["event"] == "crashed"
    assert notice["error"]["kind"] == kind
    assert notice["error"]["detail"]
    assert notice["nodeId"] == NODE_ID
    if kind != "malformed":
        assert notice["taskId"] == TASK_ID
        assert notice["course"] == {"code": "CS101", "term": "2024S"}
    expected_stage = None if stage is None else {"exchange": EXCHANGE, "routingKey": stage}
    assert notice["stage"] == expected_stage
    [logged] = [n for n in node.logs() if n["event"] == "crashed"]
    assert logged["error"]["kind"] == kind
    return notice


async def assert_rejected(node: Node, delivery: FakeDelivery, *, requeue: bool = False) -> None:
    if requeue:  # counted: a copy with the count raised goes back, then the ack
        assert delivery.put_back
        assert delivery.acked
        assert not delivery.rejected
    else:
        assert delivery.rejected
        assert not delivery.acked
        assert delivery.requeue is False
    assert node.forwards() == []
    [rejected] = [n for n in node.logs() if n["event"] == "rejected"]
    assert rejected["requeued"] is requeue
    await node.assert_work_dir_empty()


# --- executor PASS -----------------------------------------------------------------------


async def test_pass_uploads_forwards_success_branch_then_acks(tmp_path: Path) -> None:
    node = make_node(tmp_path)

    delivery = await node.run(encode(task("pass")), priority=7)

    assert delivery.acked
    assert not delivery.rejected
    assert node.events() == [*HAPPY_EVENTS, "forwarded", "acked"]
    assert node.crashes() == []
    [forward] = node.forwards()
    assert (forward.exchange, forward.routing_key) == SUCCESS_ROUTE
    assert forward.body["routingTree"] == SUCCESS
    assert forward.body["course"] == {"code": "CS101", "term": "2024S"}
    assert forward.body["taskId"] == TASK_ID
    assert forward.body["filePath"] == FILE
    assert "logMessage" not in forward.body
    assert forward.correlation_id == TASK_ID
    assert forward.priority == 7
    assert forward.message_id is not None
    assert re.fullmatch(r"[0-9a-f]{32}", forward.message_id)
    # the ack follows the confirmed forward; only the "acked" notice comes after it
    assert node.journal.index("ack") > node.journal.index(f"publish {EXCHANGE}/lab.next")
    assert node.journal[-2:] == ["ack", f"publish {LOGS[0]}/{LOGS[1]}"]
    await node.assert_work_dir_empty()


async def test_forward_and_notices_are_confirmed_before_the_ack(tmp_path: Path) -> None:
    node = make_node(tmp_path, confirm_delay=0.01)

    delivery = await node.run(encode(task("pass")))

    assert delivery.acked
    ack = node.journal.index("ack")
    log_publish = f"publish {LOGS[0]}/{LOGS[1]}"
    assert f"publish {EXCHANGE}/lab.next" in node.journal[:ack]
    assert node.journal[:ack].count(log_publish) == len([*HAPPY_EVENTS, "forwarded"])
    assert node.journal[ack + 1 :] == [log_publish]  # the "acked" notice itself


async def test_pass_upload_holds_submission_and_stage_output(tmp_path: Path) -> None:
    node = make_node(tmp_path)

    await node.run(encode(task("pass")))

    assert node.storage.uploads == [FILE]
    uploaded = zip_names(node.storage.files[FILE])
    assert uploaded["main.py"] == b"print('hi')\n"
    assert uploaded["data/in.txt"] == b"1 2 3\n"
    output = uploaded[f"output_{EXCHANGE}_pass.txt"].decode()
    assert "pass" in output
    assert output.endswith("pass\n")
    await node.assert_work_dir_empty()


async def test_a_builtin_executors_submission_is_never_unpacked(tmp_path: Path) -> None:
    """The upload is the downloaded zip with the output appended: its entries untouched."""
    node = make_node(tmp_path)
    with zipfile.ZipFile(io.BytesIO(SUBMISSION)) as zf:
        entries_end = zf.start_dir

    await node.run(encode(task("pass")))

    uploaded = node.storage.files[FILE]
    assert uploaded[:entries_end] == SUBMISSION[:entries_end]
    assert set(zip_names(uploaded)) == {*zip_names(SUBMISSION), f"output_{EXCHANGE}_pass.txt"}
    await node.assert_work_dir_empty()


async def test_executor_files_are_uploaded_and_output_file_named_after_stage(
    tmp_path: Path,
) -> None:
    executor = FileWritingExecutor("result.txt", "graded: 10/10\n")
    node = make_node(tmp_path, only(executor))

    delivery = await node.run(encode(task("python-tests")))

    assert delivery.acked
    assert executor.seen == ["data", "data/in.txt", "main.py"]
    uploaded = zip_names(node.storage.files[FILE])
    assert uploaded["result.txt"] == b"graded: 10/10\n"
    assert uploaded[f"output_{EXCHANGE}_python-tests.txt"] == b"wrote result.txt\n"
    await node.assert_work_dir_empty()


class OutputNameTaker:
    """An executor that leaves a directory where the stage's output file must go."""

    name = "squatter"
    on_timeout = TimeoutPolicy.CRASH

    async def run(self, files: TaskFiles, stage: RoutingNode) -> ExecutionResult:
        (await files.directory() / output_file_name(stage)).mkdir()
        return ExecutionResult(Outcome.PASS, "done\n")


async def test_an_output_file_that_cannot_be_written_is_an_execution_crash(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, only(OutputNameTaker()))

    delivery = await node.run(encode(task("pass")))

    notice = assert_crash(node, "execution")
    assert "cannot write the output file" in notice["error"]["detail"]
    await assert_rejected(node, delivery)
    node.assert_nothing_uploaded()


class WorkspaceWitness(FakeDelivery):
    """A delivery that notes, when settled, whether the task's workspace still exists."""

    def __init__(self, body: bytes, work_dir: Path) -> None:
        super().__init__(body)
        self.work_dir = work_dir
        self.workspaces_at_settle: list[Path] = []

    async def ack(self) -> None:
        self.workspaces_at_settle = list(self.work_dir.iterdir())
        await super().ack()

    async def reject(self, requeue: bool) -> None:
        self.workspaces_at_settle = list(self.work_dir.iterdir())
        await super().reject(requeue)


@pytest.mark.parametrize("stage", ["pass", "crash"])
async def test_the_delivery_is_settled_before_its_workspace_is_removed(
    tmp_path: Path, stage: str
) -> None:
    """The ack (or reject) does not wait for the disk: the workspace goes afterwards."""
    node = make_node(tmp_path)
    delivery = WorkspaceWitness(encode(task(stage)), node.work_dir)

    await process(delivery, node.deps)

    assert delivery.settled
    assert len(delivery.workspaces_at_settle) == 1
    await node.assert_work_dir_empty()


async def test_pass_without_success_branch_completes_and_acks(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    message = task("pass")
    del message["routingTree"]["successRoutingDecision"]

    delivery = await node.run(encode(message))

    assert delivery.acked
    assert node.forwards() == []
    assert node.events() == [*HAPPY_EVENTS, "completed", "acked"]
    assert node.storage.uploads == [FILE]
    await node.assert_work_dir_empty()


async def test_forward_message_id_is_the_same_for_two_runs_of_the_same_task(
    tmp_path: Path,
) -> None:
    first = make_node(tmp_path)
    second = make_node(tmp_path)
    failing = make_node(tmp_path)
    other = make_node(tmp_path)

    await first.run(encode(task("pass")))
    await second.run(encode(task("pass")), redelivered=True)
    await failing.run(encode(task("fail")))
    await other.run(encode(task("pass", taskId="sub-2032")))

    [one], [two] = first.forwards(), second.forwards()
    [failed], [another] = failing.forwards(), other.forwards()
    assert one.message_id == two.message_id
    assert failed.message_id != one.message_id
    assert another.message_id != one.message_id
    assert another.correlation_id == "sub-2032"
    await first.assert_work_dir_empty()


async def test_tasks_with_the_same_file_path_get_separate_directories(tmp_path: Path) -> None:
    executor = FileWritingExecutor("result.txt")
    node = make_node(tmp_path, only(executor))

    body = encode(task("pass"))  # the same task twice, as after a redelivery

    first, second = await asyncio.gather(node.run(body), node.run(body, redelivered=True))

    assert first.acked
    assert second.acked
    assert len(set(executor.workdirs)) == 2
    assert executor.listings == [["data", "data/in.txt", "main.py"]] * 2
    await node.assert_work_dir_empty()


# --- executor FAIL -----------------------------------------------------------------------


async def test_fail_uploads_forwards_failure_branch_then_acks(tmp_path: Path) -> None:
    node = make_node(tmp_path)

    delivery = await node.run(encode(task("fail")), priority=3)

    assert delivery.acked
    assert node.crashes() == []
    assert node.events() == [*HAPPY_EVENTS, "forwarded", "acked"]
    [finished] = [n for n in node.logs() if n["event"] == "execution_finished"]
    assert finished["outcome"] == "fail"
    [forward] = node.forwards()
    assert (forward.exchange, forward.routing_key) == FAILURE_ROUTE
    assert forward.body["routingTree"] == FAILURE
    assert forward.body["course"] == {"code": "CS101", "term": "2024S"}
    assert forward.priority == 3
    assert forward.correlation_id == TASK_ID
    assert f"output_{EXCHANGE}_fail.txt" in zip_names(node.storage.files[FILE])
    assert node.journal.index("ack") > node.journal.index("publish results/lab.failed")
    await node.assert_work_dir_empty()


async def test_fail_without_failure_branch_completes_and_acks(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    message = task("fail")
    message["routingTree"]["failureRoutingDecision"] = None

    delivery = await node.run(encode(message))

    assert delivery.acked
    assert node.forwards() == []
    assert node.events() == [*HAPPY_EVENTS, "completed", "acked"]
    assert node.storage.uploads == [FILE]
    await node.assert_work_dir_empty()


# --- executor crashed, no executor, no routing tree -------------------------------------


async def test_crashing_executor_rejects_without_upload(tmp_path: Path) -> None:
    node = make_node(tmp_path)

    delivery = await node.run(encode(task("crash")))

    await assert_rejected(node, delivery)
    assert_crash(node, "execution", stage="crash")
    assert node.events() == [
        "received",
        "downloaded",
        "execution_started",
        "crashed",
        "rejected",
    ]
    node.assert_nothing_uploaded()


async def test_executor_raising_a_foreign_exception_is_an_execution_crash(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path, only(RaisingExecutor()))

    delivery = await node.run(encode(task("pass")))

    await assert_rejected(node, delivery)
    notice = assert_crash(node, "execution")
    assert "executor bug" in notice["error"]["detail"]
    node.assert_nothing_uploaded()


async def test_no_matching_executor_is_a_no_executor_crash(tmp_path: Path) -> None:
    node = make_node(tmp_path)

    delivery = await node.run(encode(task("unknown-stage")))

    await assert_rejected(node, delivery)
    notice = assert_crash(node, "no_executor", stage="unknown-stage")
    assert "unknown-stage" in notice["error"]["detail"]
    assert node.events() == ["received", "crashed", "rejected"]
    assert node.storage.downloads == []
    node.assert_nothing_uploaded()


@pytest.mark.parametrize("tree", ["absent", "null"])
async def test_no_routing_tree_is_a_no_routing_crash(tmp_path: Path, tree: str) -> None:
    node = make_node(tmp_path)
    message = task()
    if tree == "absent":
        del message["routingTree"]
    else:
        message["routingTree"] = None

    delivery = await node.run(encode(message))

    await assert_rejected(node, delivery)
    assert_crash(node, "no_routing", stage=None)
    assert node.events() == ["received", "crashed", "rejected"]
    assert node.storage.downloads == []


@pytest.mark.parametrize("stage", ["crash", "unknown-stage"])
async def test_requeue_on_reject_requeues_crashes(tmp_path: Path, stage: str) -> None:
    node = make_node(tmp_path, requeue_on_reject=True)

    delivery = await node.run(encode(task(stage)))

    await assert_rejected(node, delivery, requeue=True)


@pytest.mark.parametrize(("delivery_count", "requeued"), [(1, True), (4, True), (5, False)])
async def test_a_crashing_task_is_requeued_until_the_delivery_limit(
    tmp_path: Path, delivery_count: int, requeued: bool
) -> None:
    node = make_node(tmp_path, requeue_on_reject=True)  # the limit is 5 by default

    delivery = await node.run(encode(task("crash")), delivery_count=delivery_count)

    await assert_rejected(node, delivery, requeue=requeued)
    settled = [entry for entry in node.journal if not entry.startswith("publish")]
    assert settled == (["put_back_counted", "ack"] if requeued else ["reject"])
    [notice] = node.crashes()
    assert notice["error"]["delivery"] == delivery_count
    assert notice["error"]["maxDeliveries"] == 5
    assert notice["error"]["requeued"] is requeued
    said = "crashed on delivery 5 of at most 5 (ULOS_MAX_DELIVERIES): not requeued again"
    assert (said in notice["error"]["detail"]) is not requeued


async def test_without_requeue_on_reject_crash_notices_say_nothing_of_deliveries(
    tmp_path: Path,
) -> None:
    node = make_node(tmp_path)

    await node.run(encode(task("crash")), delivery_count=3)

    [notice] = node.crashes()
    assert "delivery" not in notice["error"]


# --- execution timed out -----------------------------------------------------------------


async def test_timeout_crashes_cancels_the_executor_and_uploads_nothing(tmp_path: Path) -> None:
    executor = SleepingExecutor()
    node = make_node(tmp_path, only(executor))

    delivery = await node.run(encode(task("pass", timeout=0.05)))

    assert executor.started.is_set()
    assert executor.cancelled
    await assert_rejected(node, delivery)
    notice = assert_crash(node, "timeout")
    assert "timed out" in notice["error"]["detail"]
    assert "timed out" in notice["logMessage"]
    assert node.events() == [
        "received",
        "downloaded",
        "execution_started",
        "crashed",
        "rejected",
    ]
    node.assert_nothing_uploaded()


async def test_timeout_zero_times_out_at_once(tmp_path: Path) -> None:
    executor = BuiltinExecutor("skip", Behaviour.PASS)  # would pass instantly
    node = make_node(tmp_path, only(executor))

    delivery = await node.run(encode(task("pass", timeout=0)))

    await assert_rejected(node, delivery)
    assert_crash(node, "timeout")
    node.assert_nothing_uploaded()


async def test_timeout_with_on_timeout_fail_counts_as_fail(tmp_path: Path) -> None:
    executor = SleepingExecutor(on_timeout=TimeoutPolicy.FAIL)
    node = make_node(tmp_path, only(executor))

    delivery = await node.run(encode(task("pass", timeout=0.05)))

    assert executor.cancelled
    assert delivery.acked
    assert node.crashes() == []
    [forward] = node.forwards()
    assert (forward.exchange, forward.routing_key) == FAILURE_ROUTE
    assert node.storage.uploads == [FILE]
    output = zip_names(node.storage.files[FILE])[f"output_{EXCHANGE}_pass.txt"]
    assert b"timed out" in output
    [finished] = [n for n in node.logs() if n["event"] == "execution_finished"]
    assert finished["outcome"] == "fail"
    await node.assert_work_dir_empty()


# --- download failed ---------------------------------------------------------------------


async def test_missing_file_is_a_download_crash(tmp_path: Path) -> None:
    node = make_node(tmp_path, files={})

    delivery = await node.run(encode(task("pass")))

    await assert_rejected(node, delivery)
    notice = assert_crash(node, "download")
    assert FILE in notice["error"]["detail"]
    assert node.events() == ["received", "crashed", "rejected"]
    assert node.storage.uploads == []


# --- archive not a zip or unsafe ---------------------------------------------------------


def _symlink_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        link = zipfile.ZipInfo("link")
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        zf.writestr(link, "/etc/passwd")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("archive", "limits"),
    [
        pytest.param(b"this is not a zip", ArchiveLimits(), id="not-a-zip"),
        pytest.param(zip_bytes({"../evil.txt": "x"}), ArchiveLimits(), id="path-escape"),
        pytest.param(_symlink_zip(), ArchiveLimits(), id="symlink"),
        pytest.param(SUBMISSION, ArchiveLimits(max_entries=2), id="too-many-entries"),
        pytest.param(SUBMISSION, ArchiveLimits(max_total_bytes=5), id="too-big"),
    ],
)
async def test_unsafe_archive_is_an_archive_crash(
    tmp_path: Path, archive: bytes, limits: ArchiveLimits
) -> None:
    node = make_node(tmp_path, files={FILE: archive}, limits=limits)

    delivery = await node.run(encode(task("pass")))

    await assert_rejected(node, delivery)
    assert_crash(node, "archive")
    assert node.events() == ["received", "crashed", "rejected"]
    assert node.storage.uploads == []
    assert node.storage.files[FILE] == archive


# --- upload failed -----------------------------------------------------------------------


async def test_failed_upload_is_an_upload_crash(tmp_path: Path) -> None:
    node = make_node(tmp_path, fail_uploads=True)

    delivery = await node.run(encode(task("pass")))

    await assert_rejected(node, delivery)
    notice = assert_crash(node, "upload")
    assert FILE in notice["error"]["detail"]
    assert node.events() == [
        "received",
        "downloaded",
        "execution_started",
        "execution_finished",
        "crashed",
        "rejected",
    ]
    assert node.storage.files[FILE] == SUBMISSION


# --- next stage cannot be delivered ------------------------------------------------------


@pytest.mark.parametrize("requeue_on_reject", [False, True])
async def test_failed_forward_is_a_forward_crash_and_never_acked(
    tmp_path: Path, requeue_on_reject: bool
) -> None:
    node = make_node(tmp_path, failing={SUCCESS_ROUTE}, requeue_on_reject=requeue_on_reject)

    delivery = await node.run(encode(task("pass")))

    assert delivery.settle_attempts == 1
    await assert_rejected(node, delivery, requeue=requeue_on_reject)
    notice = assert_crash(node, "forward")
    assert EXCHANGE in notice["error"]["detail"]
    assert "lab.next" in notice["error"]["detail"]
    assert [(e.exchange, e.routing_key) for e in node.publisher.refused] == [SUCCESS_ROUTE]
    assert node.storage.uploads == [FILE]  # already done
    assert node.events() == [*HAPPY_EVENTS, "crashed", "rejected"]


# --- broker connection lost while the task is in flight ---------------------------------


async def _run_losing_the_connection(
    tmp_path: Path, lost_after: float | None
) -> tuple[Node, FakeDelivery, list[dict[str, Any]]]:
    """The forward fails on a lost connection; the delivery's own channel is seen closed
    `lost_after` seconds later (None: never, the channel is alive)."""
    node = make_node(tmp_path, failing={SUCCESS_ROUTE})
    node.publisher.connection_lost = True
    delivery = FakeDelivery(encode(task("pass")), journal=node.journal)
    if lost_after is not None:
        asyncio.get_running_loop().call_later(lost_after, setattr, delivery, "lost", True)
    with capture_logs() as logged:
        await process(delivery, node.deps)
    await node.cleaner.drain()
    return node, delivery, logged


@pytest.mark.parametrize("lost_after", [0.0, 0.3])
async def test_a_task_interrupted_by_a_lost_connection_is_not_a_crash(
    tmp_path: Path, lost_after: float
) -> None:
    node, delivery, logged = await _run_losing_the_connection(tmp_path, lost_after)

    assert node.crashes() == []
    assert "crashed" not in node.events()
    assert delivery.settle_attempts == 0  # nothing to settle on a dead channel
    [interrupted] = [e for e in logged if e["event"] == "task_interrupted"]
    assert interrupted["task_id"] == TASK_ID
    assert "connection lost" in interrupted["reason"]
    await node.assert_work_dir_empty()


async def test_a_lost_publishing_channel_with_a_live_delivery_is_still_a_crash(
    tmp_path: Path,
) -> None:
    node, delivery, _ = await _run_losing_the_connection(tmp_path, lost_after=None)

    await assert_rejected(node, delivery)
    assert_crash(node, "forward")


async def test_a_crash_of_a_delivery_already_lost_is_not_reported(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    delivery = FakeDelivery(encode(task("crash")), journal=node.journal)
    delivery.lost = True

    with capture_logs() as logged:
        await process(delivery, node.deps)

    assert node.crashes() == []
    assert delivery.settle_attempts == 0
    assert [e for e in logged if e["event"] == "task_interrupted"]
    await node.assert_work_dir_empty()


# --- malformed message -------------------------------------------------------------------


@pytest.mark.parametrize("requeue_on_reject", [False, True])
async def test_body_that_is_not_json_is_rejected_as_poison(
    tmp_path: Path, requeue_on_reject: bool
) -> None:
    node = make_node(tmp_path, requeue_on_reject=requeue_on_reject)
    body = b'{"taskId": "sub-2031", oops'

    delivery = await node.run(body)

    await assert_rejected(node, delivery, requeue=False)
    notice = assert_crash(node, "malformed", stage=None)
    assert notice["rawBody"] == body.decode()
    assert notice["rawBodyTruncated"] is False
    assert node.events() == ["crashed", "rejected"]
    assert node.storage.downloads == []


@pytest.mark.parametrize("requeue_on_reject", [False, True])
async def test_task_breaking_the_format_is_rejected_as_poison_with_errors(
    tmp_path: Path, requeue_on_reject: bool
) -> None:
    node = make_node(tmp_path, requeue_on_reject=requeue_on_reject)
    body = encode(task("pass", timeout="ten", filePath="relative.zip"))

    delivery = await node.run(body)

    await assert_rejected(node, delivery, requeue=False)
    notice = assert_crash(node, "malformed", stage=None)
    assert notice["rawBody"] == body.decode()
    paths = {error["path"] for error in notice["error"]["errors"]}
    assert paths == {"$.timeout", "$.filePath"}
    # the object as received, unknown fields too, so consumers can match the task
    assert notice["taskId"] == TASK_ID
    assert notice["course"] == {"code": "CS101", "term": "2024S"}
    assert notice["timeout"] == "ten"
    assert node.storage.downloads == []


async def test_deeply_nested_body_is_rejected_as_poison(tmp_path: Path) -> None:
    node = make_node(tmp_path, requeue_on_reject=True)

    with capture_logs():
        delivery = await node.run(b"[" * 100_000)

    await assert_rejected(node, delivery, requeue=False)
    notice = assert_crash(node, "malformed", stage=None)
    assert notice["rawBodyTruncated"] is True


async def test_huge_malformed_body_is_truncated_in_the_notice(tmp_path: Path) -> None:
    node = make_node(tmp_path)
    body = b"x" * 10_000

    delivery = await node.run(body)

    assert delivery.rejected
    [notice] = node.crashes()
    assert notice["rawBody"] == "x" * 4096
    assert notice["rawBodyTruncated"] is True
    await node.assert_work_dir_empty()


async def test_long_stage_names_still_get_an_output_file(tmp_path: Path) -> None:
    node = make_node(tmp_path, only(BuiltinExecutor("pass", Behaviour.PASS)))
    message = task("k" * 250)

    with capture_logs():
        delivery = await node.run(encode(message))

    assert delivery.acked
    assert node.crashes() == []
    names = zip_names(node.storage.files[FILE])
    assert [n for n in names if n.startswith("output_") and n.endswith(".txt")]


# --- settling and cancellation -----------------------------------------------------------


async def test_settle_failed_on_ack_does_not_raise(tmp_path: Path) -> None:
    node = make_node(tmp_path)

    with capture_logs() as logged:
        delivery = await node.run(encode(task("pass")), settle_fails=True)

    assert delivery.settle_attempts == 1
    assert not delivery.settled
    assert [e.routing_key for e in node.forwards()] == ["lab.next"]
    assert "acked" not in node.events()
    assert any(entry["event"] == "settle_failed" for entry in logged)
    await node.assert_work_dir_empty()


async def test_settle_failed_on_reject_does_not_raise(tmp_path: Path) -> None:
    node = make_node(tmp_path)

    with capture_logs():
        delivery = await node.run(encode(task("crash")), settle_fails=True)

    assert delivery.settle_attempts == 1
    assert "rejected" not in node.events()
    assert_crash(node, "execution", stage="crash")
    await node.assert_work_dir_empty()


@pytest.mark.parametrize("requeue_on_reject", [False, True])
async def test_cancelled_process_returns_the_delivery_and_reraises(
    tmp_path: Path, requeue_on_reject: bool
) -> None:
    executor = SleepingExecutor()
    node = make_node(tmp_path, only(executor), requeue_on_reject=requeue_on_reject)
    delivery = FakeDelivery(encode(task("pass")), journal=node.journal)

    running = asyncio.create_task(process(delivery, node.deps))
    await asyncio.wait_for(executor.started.wait(), timeout=5)
    assert executor.workdir is not None
    assert executor.workdir.is_dir()
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert executor.cancelled
    assert delivery.rejected
    assert delivery.requeue is True
    assert not delivery.acked
    assert node.crashes() == []
    assert node.forwards() == []
    assert node.events()[-1] == "rejected"
    assert node.logs()[-1]["requeued"] is True
    node.assert_nothing_uploaded()
    await node.assert_work_dir_empty()


async def test_cancelled_process_with_a_dead_channel_still_reraises_cancellation(
    tmp_path: Path,
) -> None:
    executor = SleepingExecutor()
    node = make_node(tmp_path, only(executor))
    delivery = FakeDelivery(encode(task("pass")), settle_fails=True)

    running = asyncio.create_task(process(delivery, node.deps))
    await asyncio.wait_for(executor.started.wait(), timeout=5)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running

    assert delivery.settle_attempts == 1
    assert executor.cancelled
    await node.assert_work_dir_empty()


async def test_refused_notices_do_not_stop_the_task_and_are_logged(tmp_path: Path) -> None:
    node = make_node(tmp_path, failing={LOGS})

    with capture_logs() as logged:
        delivery = await node.run(encode(task("pass")))

    assert delivery.acked
    assert [e.routing_key for e in node.forwards()] == ["lab.next"]
    lost = [entry["event_name"] for entry in logged if entry["event"] == "notice_not_delivered"]
    assert lost == [*HAPPY_EVENTS, "forwarded", "acked"]
    await node.assert_work_dir_empty()


async def test_redelivered_task_says_so_in_its_received_notice(tmp_path: Path) -> None:
    node = make_node(tmp_path)

    await node.run(encode(task("pass")), redelivered=True)

    [received] = [n for n in node.logs() if n["event"] == "received"]
    assert "redelivered" in received["logMessage"]
    assert received["taskId"] == TASK_ID
    assert received["stage"] == {"exchange": EXCHANGE, "routingKey": "pass"}
