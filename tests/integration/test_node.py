"""An in-process node against the real broker and FTP server: every row of SPEC §3."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tests.support.harness import (
    Pipeline,
    make_zip,
    node_settings,
    pipeline,
    running_node,
    stage,
    task,
    zip_names,
)
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(60)

SUBMISSION = {"main.py": "print('hello')\n", "lib/util.py": "X = 1\n"}


@pytest.fixture
async def line(names: Names, amqp) -> Pipeline:  # type: ignore[no-untyped-def]
    async with pipeline(names, amqp) as created:
        yield created


@pytest.fixture
def work_dir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


def branches(names: Names, key: str) -> dict:
    return stage(
        names.exchange,
        key,
        success=stage(names.exchange, "next-key"),
        failure=stage(names.exchange, "failed-key"),
    )


async def test_pass_forwards_success_branch_and_uploads_output(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/alice.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    body = task("t-pass", path, branches(names, "skip"), courseId="CS-101")
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        await line.publish(body, priority=7)
        message = await line.next_message("next")
        forwarded = json.loads(message.body)
        events = [n["event"] for n in await line.logs_until("t-pass", "acked")]

    assert forwarded["routingTree"] == {"exchange": names.exchange, "routingKey": "next-key"}
    assert forwarded["courseId"] == "CS-101"
    assert forwarded["taskId"] == "t-pass"
    assert message.correlation_id == "t-pass"
    assert message.priority == 7
    assert message.delivery_mode == 2
    assert message.content_type == "application/json"
    assert message.message_id and len(message.message_id) == 32
    assert events == [
        "received",
        "downloaded",
        "execution_started",
        "execution_finished",
        "uploaded",
        "forwarded",
        "acked",
    ]
    names_in_zip = zip_names(ftp_server.get(path))
    assert {"main.py", "lib/util.py", f"output_{names.exchange}_skip.txt"} <= names_in_zip
    assert list(work_dir.iterdir()) == []
    assert line.empty("crashes")


async def test_same_task_gets_same_forward_message_id(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/same.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    body = task("t-dup", path, branches(names, "skip"))
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        await line.publish(body)
        first = await line.next_message("next")
        await line.publish(body)
        second = await line.next_message("next")
    assert first.message_id == second.message_id


async def test_fail_forwards_failure_branch(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/bob.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        await line.publish(task("t-fail", path, branches(names, "fail")))
        forwarded = await line.next_json("failed")
        notices = await line.logs_until("t-fail", "acked")
    assert forwarded["routingTree"]["routingKey"] == "failed-key"
    finished = next(n for n in notices if n["event"] == "execution_finished")
    assert finished["outcome"] == "fail"
    assert finished["stage"] == {"exchange": names.exchange, "routingKey": "fail"}
    assert f"output_{names.exchange}_fail.txt" in zip_names(ftp_server.get(path))
    assert line.empty("next")


async def test_missing_branch_completes_and_acks(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/last.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        await line.publish(task("t-end", path, stage(names.exchange, "skip")))
        events = [n["event"] for n in await line.logs_until("t-end", "acked")]
    assert "completed" in events and "forwarded" not in events
    assert line.empty("next") and line.empty("failed") and line.empty("crashes")


@pytest.mark.parametrize(
    ("key", "timeout", "files", "kind"),
    [
        ("crash", 10, {"a.txt": "x"}, "execution"),
        ("skip", 0, {"a.txt": "x"}, "timeout"),
        ("no-such-stage", 10, {"a.txt": "x"}, "no_executor"),
        ("skip", 10, None, "download"),
        ("skip", 10, b"this is not a zip", "archive"),
        ("skip", 10, {"../escape.txt": "x"}, "archive"),
    ],
)
async def test_crashes_reject_and_report(
    line: Pipeline,
    names: Names,
    broker: Broker,
    ftp_server: FtpServer,
    work_dir: Path,
    key: str,
    timeout: float,
    files: dict | bytes | None,
    kind: str,
) -> None:
    path = f"/{names.prefix}/crash.zip"
    original = files if isinstance(files, bytes) else make_zip(files) if files else None
    if original is not None:
        ftp_server.put(path, original)
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        await line.publish(task("t-crash", path, branches(names, key), timeout=timeout))
        crash = await line.next_json("crashes")
        events = [n["event"] for n in await line.logs_until("t-crash", "rejected")]
    assert crash["error"]["kind"] == kind
    assert crash["event"] == "crashed" and crash["taskId"] == "t-crash"
    assert crash["nodeId"] == f"{names.prefix}-node"
    assert "crashed" in events and "uploaded" not in events
    if original is not None:
        assert ftp_server.get(path) == original  # nothing uploaded
    assert not (work_dir.parent / "escape.txt").exists()
    assert list(work_dir.iterdir()) == []
    assert line.empty("next") and line.empty("failed")
    assert await line.depth() == 0  # rejected without requeue


async def test_no_routing_tree(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        await line.publish(task("t-noroute", "/x/y.zip", None))
        crash = await line.next_json("crashes")
    assert crash["error"]["kind"] == "no_routing"
    assert crash["stage"] is None


async def test_malformed_messages_are_reported_and_node_goes_on(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/ok.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    settings = node_settings(
        names, broker, ftp_server, work_dir, MESSAGE_BROKER_REQUEUE_ON_REJECT=True
    )
    async with running_node(settings):
        await line.publish(b"{not json")
        not_json = await line.next_json("crashes")
        await line.publish({"taskId": "", "filePath": "relative.zip", "timeout": True})
        invalid = await line.next_json("crashes")
        await line.publish(task("t-after", path, branches(names, "skip")))
        after = await line.next_json("next")
    assert not_json["error"]["kind"] == "malformed"
    assert not_json["rawBody"] == "{not json"
    paths = {error["path"] for error in invalid["error"]["errors"]}
    assert {"$.taskId", "$.taskOwnerId", "$.filePath", "$.timeout"} <= paths
    assert after["taskId"] == "t-after"
    assert await line.depth() == 0  # poison is never requeued


@pytest.mark.parametrize("target", ["missing-exchange", "unbound-key"])
async def test_undeliverable_forward_is_a_crash_not_an_ack(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path, target: str
) -> None:
    path = f"/{names.prefix}/fwd.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    exchange = f"{names.prefix}.nowhere" if target == "missing-exchange" else names.exchange
    tree = stage(names.exchange, "skip", success=stage(exchange, "nobody-listens"))
    settings = node_settings(
        names, broker, ftp_server, work_dir, MESSAGE_BROKER_REQUEUE_ON_REJECT=True
    )
    async with running_node(settings):
        await line.publish(task("t-fwd", path, tree))
        crash = await line.next_json("crashes")
        await line.logs_until("t-fwd", "rejected")
        # requeue is on: the task comes back rather than being acked as if delivered
        redelivered = await line.logs_until("t-fwd", "received")
        # the node keeps publishing fine for other tasks
        await line.publish(task("t-ok", path, branches(names, "skip")))
        assert (await line.next_json("next", timeout=20))["taskId"] == "t-ok"
    assert crash["error"]["kind"] == "forward"
    assert "nobody-listens" in crash["error"]["detail"]
    assert "redelivered" in redelivered[-1]["logMessage"]


async def test_same_file_path_at_once_does_not_collide(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/shared.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        await line.publish(task("t-a", path, branches(names, "pass")))
        await line.publish(task("t-b", path, branches(names, "pass")))
        got = {(await line.next_json("next"))["taskId"] for _ in range(2)}
    assert got == {"t-a", "t-b"}
    assert {"main.py", "lib/util.py", f"output_{names.exchange}_pass.txt"} <= zip_names(
        ftp_server.get(path)
    )
    assert line.empty("crashes")


async def test_prefetch_bounds_tasks_running_at_once(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    ftp_server.put(f"/{names.prefix}/c.zip", make_zip(SUBMISSION))
    settings = node_settings(names, broker, ftp_server, work_dir, MESSAGE_BROKER_PREFETCH_COUNT=3)
    async with running_node(settings):
        peak = await _peak_running(line, names, tasks=7)
    assert peak == 3


async def _peak_running(line: Pipeline, names: Names, tasks: int) -> int:
    """Publish `tasks` slow tasks; the most that ran at once, from the notices."""
    for n in range(tasks):
        await line.publish(task(f"t-{n}", f"/{names.prefix}/c.zip", branches(names, "pass")))
    running, peak = 0, 0
    for _ in range(2 * tasks):
        notice = await _next_execution_event(line)
        running += 1 if notice == "execution_started" else -1
        peak = max(peak, running)
    return peak


async def _next_execution_event(line: Pipeline) -> str:
    while True:
        event = (await line.next_json("logs", timeout=20))["event"]
        if event in ("execution_started", "execution_finished"):
            return str(event)


async def test_requeue_on_reject_returns_the_task(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    settings = node_settings(
        names, broker, ftp_server, work_dir, MESSAGE_BROKER_REQUEUE_ON_REJECT=True
    )
    async with running_node(settings):
        await line.publish(task("t-rq", f"/{names.prefix}/missing.zip", branches(names, "skip")))
        first = await line.logs_until("t-rq", "rejected")
        second = await line.logs_until("t-rq", "received")
    assert first[-1]["requeued"] is True
    assert "redelivered" in second[-1]["logMessage"]


async def test_graceful_stop_lets_in_flight_task_finish(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/g.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    async with running_node(node_settings(names, broker, ftp_server, work_dir)) as stop:
        await line.publish(task("t-grace", path, branches(names, "pass")))
        await line.logs_until("t-grace", "execution_started")
        stop.set()
        forwarded = await line.next_json("next")
    assert forwarded["taskId"] == "t-grace"


async def test_grace_expiry_returns_task_to_queue(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/slow.zip"
    ftp_server.put(path, make_zip(SUBMISSION))
    settings = node_settings(names, broker, ftp_server, work_dir, ULOS_SHUTDOWN_GRACE=0.2)
    async with running_node(settings) as stop:
        await line.publish(task("t-slow", path, branches(names, "pass")))
        await line.logs_until("t-slow", "execution_started")
        stop.set()
        returned = await line.logs_until("t-slow", "rejected")
    assert returned[-1]["requeued"] is True
    await asyncio.sleep(0.3)
    assert await line.depth() == 1
    assert list(work_dir.iterdir()) == []


async def test_prefetch_zero_uses_own_cap(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    ftp_server.put(f"/{names.prefix}/c.zip", make_zip(SUBMISSION))
    settings = node_settings(
        names,
        broker,
        ftp_server,
        work_dir,
        MESSAGE_BROKER_PREFETCH_COUNT=0,
        ULOS_MAX_IN_FLIGHT=2,
    )
    async with running_node(settings):
        peak = await _peak_running(line, names, tasks=5)
    assert peak == 2


async def test_wrapped_folder_and_mac_junk_are_unpacked_cleanly(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/mac.zip"
    ftp_server.put(
        path,
        make_zip(
            {
                "alice/main.py": "print(1)\n",
                "alice/.DS_Store": "junk",
                "__MACOSX/alice/._main.py": "junk",
            }
        ),
    )
    async with running_node(node_settings(names, broker, ftp_server, work_dir)):
        await line.publish(task("t-mac", path, branches(names, "skip")))
        await line.next_json("next")
    assert zip_names(ftp_server.get(path)) == {"main.py", f"output_{names.exchange}_skip.txt"}


async def test_zip_over_the_entry_limit_is_refused(
    line: Pipeline, names: Names, broker: Broker, ftp_server: FtpServer, work_dir: Path
) -> None:
    path = f"/{names.prefix}/big.zip"
    ftp_server.put(path, make_zip({f"f{n}.txt": "x" for n in range(5)}))
    settings = node_settings(names, broker, ftp_server, work_dir, ULOS_ARCHIVE_MAX_ENTRIES=4)
    async with running_node(settings):
        await line.publish(task("t-big", path, branches(names, "skip")))
        crash = await line.next_json("crashes")
    assert crash["error"]["kind"] == "archive"
    assert "limit" in crash["error"]["detail"]
    assert list(work_dir.iterdir()) == []
