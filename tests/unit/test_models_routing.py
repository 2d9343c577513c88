"""The pure core: task parsing, routing, notices, settings and the executor registry."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.fakes import FakeEngine
from ulos_py.errors import (
    ConfigError,
    DownloadFailed,
    ExecutionCrashed,
    ExecutionTimedOut,
    ForwardFailed,
    MalformedTask,
    NoExecutor,
    NoRouting,
    TaskCrash,
    UnsafeArchive,
    UploadFailed,
)
from ulos_py.execution.builtin import Behaviour, BuiltinExecutor
from ulos_py.execution.docker import DockerExecutor
from ulos_py.execution.docker_spec import DockerExecutorSpec
from ulos_py.execution.registry import Registry, load_registry
from ulos_py.models import Outcome, RoutingNode, Task, parse_task
from ulos_py.notices import RAW_BODY_LIMIT, Event, NoticeContext, crash_notice, log_notice
from ulos_py.ports import TimeoutPolicy
from ulos_py.routing import (
    current_stage,
    forward_body,
    forward_message_id,
    next_hop,
    output_file_name,
)
from ulos_py.settings import load_settings

REPO = Path(__file__).resolve().parents[2]
SHIPPED_REGISTRY = REPO / "executors" / "registry.toml"

TREE: dict[str, Any] = {
    "exchange": "processing-exchange",
    "routingKey": "python-check",
    "successRoutingDecision": {
        "exchange": "processing-exchange",
        "routingKey": "python-tests",
        "successRoutingDecision": {"exchange": "processing-exchange", "routingKey": "lab.passed"},
        "failureRoutingDecision": {"exchange": "processing-exchange", "routingKey": "lab.failed"},
    },
    "failureRoutingDecision": {"exchange": "processing-exchange", "routingKey": "lab.failed"},
}


def message(**fields: Any) -> dict[str, Any]:
    """The SPEC §2 example task; `fields` override or add top-level fields."""
    return {
        "taskId": "sub-2031",
        "taskOwnerId": "student-88",
        "filePath": "/ftp/one/lab3/sub-2031.zip",
        "timeout": 120,
        "routingTree": TREE,
        **fields,
    }


def encode(value: Any) -> bytes:
    return json.dumps(value).encode("utf-8")


def parse(value: dict[str, Any]) -> Task:
    return parse_task(encode(value))[1]


def errors_of(value: Any) -> list[dict[str, Any]]:
    with pytest.raises(MalformedTask) as caught:
        parse_task(encode(value))
    assert caught.value.kind == "malformed"
    assert caught.value.raw_body == encode(value)
    return caught.value.errors


def paths_of(value: Any) -> set[str]:
    return {error["path"] for error in errors_of(value)}


# --- parse_task --------------------------------------------------------------------------


def test_parse_valid_task() -> None:
    body = encode(message(logMessage="ignored"))

    received, task = parse_task(body)

    assert received == json.loads(body)
    assert task.task_id == "sub-2031"
    assert task.task_owner_id == "student-88"
    assert task.file_path == "/ftp/one/lab3/sub-2031.zip"
    assert task.timeout == 120
    assert task.routing_tree is not None
    assert task.routing_tree.exchange == "processing-exchange"
    assert task.routing_tree.routing_key == "python-check"
    success = task.routing_tree.success_routing_decision
    assert success is not None
    assert success.routing_key == "python-tests"
    assert success.failure_routing_decision is not None
    assert success.failure_routing_decision.routing_key == "lab.failed"


def test_parse_keeps_unknown_fields() -> None:
    received, task = parse_task(encode(message(course={"code": "CS101"}, attempt=3)))

    assert received["course"] == {"code": "CS101"}
    assert received["attempt"] == 3
    assert task.model_extra == {"course": {"code": "CS101"}, "attempt": 3}


def test_parse_accepts_fractional_and_zero_timeouts() -> None:
    assert parse(message(timeout=0)).timeout == 0
    assert parse(message(timeout=2.5)).timeout == 2.5


@pytest.mark.parametrize("tree", [None, "absent"])
def test_parse_accepts_a_missing_routing_tree(tree: str | None) -> None:
    value = message(routingTree=tree)
    if tree == "absent":
        del value["routingTree"]

    assert parse(value).routing_tree is None


def test_missing_branch_and_null_branch_parse_the_same() -> None:
    with_nulls = parse(
        message(
            routingTree={
                "exchange": "",
                "routingKey": "q",
                "successRoutingDecision": None,
                "failureRoutingDecision": None,
            }
        )
    )
    without = parse(message(routingTree={"exchange": "", "routingKey": "q"}))

    for task in (with_nulls, without):
        assert task.routing_tree is not None
        assert task.routing_tree.success_routing_decision is None
        assert task.routing_tree.failure_routing_decision is None


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b'{"taskId": ', b"\xff\xfe{}", b"{'taskId': 'single quotes'}"],
)
def test_body_that_is_not_json_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedTask) as caught:
        parse_task(body)

    assert caught.value.raw_body == body
    assert "JSON" in caught.value.detail


@pytest.mark.parametrize("value", [[message()], "a string", 42, None, True])
def test_json_that_is_not_an_object_is_malformed(value: Any) -> None:
    with pytest.raises(MalformedTask, match="not an object"):
        parse_task(encode(value))


@pytest.mark.parametrize("name", ["taskId", "taskOwnerId", "filePath", "timeout"])
def test_required_field_missing(name: str) -> None:
    value = message()
    del value[name]

    assert errors_of(value) == [{"path": f"$.{name}", "message": "Field required"}]


@pytest.mark.parametrize(
    ("fields", "path"),
    [
        ({"taskId": ""}, "$.taskId"),
        ({"taskId": 2031}, "$.taskId"),
        ({"taskId": None}, "$.taskId"),
        ({"taskOwnerId": 88}, "$.taskOwnerId"),
        ({"taskOwnerId": None}, "$.taskOwnerId"),
        ({"filePath": "ftp/one/lab3/a.zip"}, "$.filePath"),
        ({"filePath": "/ftp/one/../etc/passwd"}, "$.filePath"),
        ({"filePath": "/ftp/one/lab3/.."}, "$.filePath"),
        ({"filePath": "/ftp/one/a\u0000.zip"}, "$.filePath"),
        ({"filePath": 7}, "$.filePath"),
        ({"timeout": -1}, "$.timeout"),
        ({"timeout": "120"}, "$.timeout"),
        ({"timeout": True}, "$.timeout"),
        ({"timeout": False}, "$.timeout"),
        ({"timeout": None}, "$.timeout"),
        ({"routingTree": "processing-exchange"}, "$.routingTree"),
        ({"routingTree": {"exchange": "e"}}, "$.routingTree.routingKey"),
        ({"routingTree": {"routingKey": "k"}}, "$.routingTree.exchange"),
        ({"routingTree": {"exchange": 1, "routingKey": "k"}}, "$.routingTree.exchange"),
        ({"logMessage": 5}, "$.logMessage"),
    ],
)
def test_rule_of_section_2_broken(fields: dict[str, Any], path: str) -> None:
    errors = errors_of(message(**fields))

    assert [error["path"] for error in errors] == [path]
    assert errors[0]["message"]


def test_nested_branch_error_has_its_json_path() -> None:
    tree = {
        "exchange": "e",
        "routingKey": "a",
        "successRoutingDecision": {
            "exchange": "e",
            "routingKey": "b",
            "failureRoutingDecision": {"exchange": "e", "routingKey": 5},
        },
    }

    paths = paths_of(message(routingTree=tree))

    assert paths == {"$.routingTree.successRoutingDecision.failureRoutingDecision.routingKey"}


def test_every_problem_is_reported_at_once() -> None:
    value = message(taskId="", timeout=-5, filePath="relative.zip")

    with pytest.raises(MalformedTask) as caught:
        parse_task(encode(value))

    assert {e["path"] for e in caught.value.errors} == {"$.taskId", "$.timeout", "$.filePath"}
    for path in ("$.taskId", "$.timeout", "$.filePath"):
        assert path in caught.value.detail


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000, id="arrays"),
        pytest.param(b'{"a":' * 100_000, id="objects"),
    ],
)
def test_deeply_nested_json_is_malformed(body: bytes) -> None:
    with pytest.raises(MalformedTask):
        parse_task(body)


def test_deep_routing_tree_is_malformed_not_a_crash() -> None:
    tree: dict[str, Any] | None = None
    for _ in range(900):
        tree = {"exchange": "e", "routingKey": "k", "successRoutingDecision": tree}

    with pytest.raises(MalformedTask):
        parse_task(encode(message(routingTree=tree)))


def test_non_finite_timeout_is_malformed() -> None:
    body = encode(message()).replace(b'"timeout": 120', b'"timeout": NaN')

    with pytest.raises(MalformedTask) as caught:
        parse_task(body)

    assert [e["path"] for e in caught.value.errors] == ["$.timeout"]


@pytest.mark.parametrize("field", ["exchange", "routingKey"])
def test_short_strings_are_limited_to_255_bytes(field: str) -> None:
    def tree(value: str) -> dict[str, Any]:
        return {"exchange": "e", "routingKey": "k", field: value}

    assert parse(message(routingTree=tree("k" * 255))).routing_tree is not None
    assert paths_of(message(routingTree=tree("k" * 256))) == {f"$.routingTree.{field}"}
    # bytes, not characters: 128 two-byte characters are 256 bytes
    assert paths_of(message(routingTree=tree("é" * 128))) == {f"$.routingTree.{field}"}


def test_empty_exchange_is_the_default_exchange() -> None:
    task = parse(message(routingTree={"exchange": "", "routingKey": "queue-name"}))

    assert task.routing_tree is not None
    assert task.routing_tree.exchange == ""


def test_snake_case_field_names_are_not_the_task_format() -> None:
    value = {
        "task_id": "sub-2031",
        "task_owner_id": "student-88",
        "file_path": "/ftp/one/lab3/sub-2031.zip",
        "timeout": 1,
        "routing_tree": {"exchange": "e", "routing_key": "k"},
    }

    assert paths_of(value) >= {"$.taskId", "$.taskOwnerId", "$.filePath"}


# --- routing -----------------------------------------------------------------------------


def test_current_stage_is_the_root_of_the_tree() -> None:
    task = parse(message())

    assert current_stage(task) is task.routing_tree


def test_current_stage_without_tree_is_no_routing() -> None:
    task = parse(message(routingTree=None))

    with pytest.raises(NoRouting):
        current_stage(task)


def test_next_hop_follows_the_outcome() -> None:
    stage = current_stage(parse(message()))

    success = next_hop(stage, Outcome.PASS)
    failure = next_hop(stage, Outcome.FAIL)

    assert success is not None
    assert failure is not None
    assert success.routing_key == "python-tests"
    assert failure.routing_key == "lab.failed"
    assert success.success_routing_decision is not None
    leaf = next_hop(success.success_routing_decision, Outcome.PASS)
    assert leaf is None
    assert next_hop(success.success_routing_decision, Outcome.FAIL) is None


def test_forward_body_replaces_the_tree_and_keeps_unknown_fields() -> None:
    received, task = parse_task(
        encode(message(course={"code": "CS101"}, logMessage="from the last node"))
    )
    hop = next_hop(current_stage(task), Outcome.PASS)
    assert hop is not None
    original = json.loads(json.dumps(received))

    body = forward_body(received, hop)

    assert body["routingTree"] == TREE["successRoutingDecision"]
    assert body["course"] == {"code": "CS101"}
    assert "logMessage" not in body
    assert {k: v for k, v in body.items() if k != "routingTree"} == {
        k: v for k, v in received.items() if k not in ("routingTree", "logMessage")
    }
    assert received == original  # the received object is not changed
    assert parse_task(encode(body))[1].routing_tree == hop


def test_forward_body_keeps_unknown_fields_inside_the_tree() -> None:
    tree = {
        "exchange": "e",
        "routingKey": "a",
        "successRoutingDecision": {"exchange": "e", "routingKey": "b", "weight": 2},
    }
    received, task = parse_task(encode(message(routingTree=tree)))
    hop = next_hop(current_stage(task), Outcome.PASS)
    assert hop is not None

    assert forward_body(received, hop)["routingTree"] == {
        "exchange": "e",
        "routingKey": "b",
        "weight": 2,
    }


def test_forward_message_id_is_deterministic() -> None:
    first = parse(message(course="A"))
    # the same task with its keys in another order and other unknown fields
    reordered_tree = dict(reversed(list(TREE.items())))
    second = parse(dict(reversed(list(message(routingTree=reordered_tree).items()))))

    one = forward_message_id(first, current_stage(first), Outcome.PASS)
    two = forward_message_id(second, current_stage(second), Outcome.PASS)

    assert one == two
    assert re.fullmatch(r"[0-9a-f]{32}", one)


def test_forward_message_id_differs_by_task_and_outcome() -> None:
    task = parse(message())
    other = parse(message(taskId="sub-2032"))
    stage = current_stage(task)

    ids = {
        forward_message_id(task, stage, Outcome.PASS),
        forward_message_id(task, stage, Outcome.FAIL),
        forward_message_id(other, current_stage(other), Outcome.PASS),
    }

    assert len(ids) == 3


def test_forward_message_id_differs_per_depth_for_the_same_routing_key() -> None:
    tree = {
        "exchange": "e",
        "routingKey": "retry",
        "successRoutingDecision": {
            "exchange": "e",
            "routingKey": "retry",
            "successRoutingDecision": {"exchange": "e", "routingKey": "retry"},
        },
    }
    task = parse(message(routingTree=tree))
    depth0 = current_stage(task)
    depth1 = next_hop(depth0, Outcome.PASS)
    assert depth1 is not None
    depth2 = next_hop(depth1, Outcome.PASS)
    assert depth2 is not None

    ids = [forward_message_id(task, stage, Outcome.PASS) for stage in (depth0, depth1, depth2)]

    assert len(set(ids)) == 3


def test_forward_message_id_treats_null_and_missing_branch_the_same() -> None:
    next_stage = {"exchange": "e", "routingKey": "next"}
    base = {"exchange": "e", "routingKey": "k", "successRoutingDecision": next_stage}
    with_null = parse(message(routingTree={**base, "failureRoutingDecision": None}))
    without = parse(message(routingTree=base))

    assert forward_message_id(
        with_null, current_stage(with_null), Outcome.PASS
    ) == forward_message_id(without, current_stage(without), Outcome.PASS)


@pytest.mark.parametrize(
    ("exchange", "routing_key", "name"),
    [
        ("processing-exchange", "python-tests", "output_processing-exchange_python-tests.txt"),
        ("", "queue", "output__queue.txt"),
        ("ex", "a/b", "output_ex_a_b.txt"),
        ("ex/../..", "k", "output_ex_.._.._k.txt"),
        ("ex", "a\\b", "output_ex_a_b.txt"),
    ],
)
def test_output_file_name(exchange: str, routing_key: str, name: str) -> None:
    stage = RoutingNode(exchange=exchange, routing_key=routing_key)

    assert output_file_name(stage) == name
    assert "/" not in output_file_name(stage)


def test_output_file_name_fits_a_file_system_name() -> None:
    stage = RoutingNode(exchange="e" * 255, routing_key="k" * 255)

    name = output_file_name(stage)

    assert len(name.encode("utf-8")) <= 255
    assert name.startswith("output_")
    assert name.endswith(".txt")


# --- notices -----------------------------------------------------------------------------

SPEC_LOG_EVENTS = {
    "received",
    "downloaded",
    "execution_started",
    "execution_finished",
    "uploaded",
    "forwarded",
    "completed",
    "acked",
    "rejected",
    "crashed",
}


def context(stage: bool = True) -> NoticeContext:
    received, task = parse_task(encode(message(course={"code": "CS101"}, logMessage="old")))
    return NoticeContext("node-7", received, task.routing_tree if stage else None)


def assert_timestamp_is_recent_utc(value: str) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|\+00:00)", value)
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - moment) < timedelta(minutes=1)


def test_event_vocabulary_covers_spec() -> None:
    assert {event.value for event in Event} >= SPEC_LOG_EVENTS


def test_log_notice_fields() -> None:
    ctx = context()

    notice = log_notice(ctx, Event.EXECUTION_FINISHED, "executor x finished: pass", outcome="pass")

    assert notice["event"] == "execution_finished"
    assert notice["logMessage"] == "executor x finished: pass"
    assert notice["nodeId"] == "node-7"
    assert notice["stage"] == {"exchange": "processing-exchange", "routingKey": "python-check"}
    assert notice["outcome"] == "pass"
    assert_timestamp_is_recent_utc(notice["timestamp"])
    # the task as received, unknown fields too
    for name in ("taskId", "taskOwnerId", "filePath", "timeout", "routingTree", "course"):
        assert notice[name] == ctx.received[name]
    assert "error" not in notice


def test_log_notice_without_known_stage() -> None:
    notice = log_notice(context(stage=False), Event.RECEIVED, "r")

    assert notice["stage"] is None


@pytest.mark.parametrize(
    ("crash", "kind"),
    [
        (NoRouting("no tree"), "no_routing"),
        (NoExecutor("none for python-check"), "no_executor"),
        (DownloadFailed("550"), "download"),
        (UnsafeArchive("escapes"), "archive"),
        (ExecutionCrashed("boom"), "execution"),
        (ExecutionTimedOut("timed out after 3 s"), "timeout"),
        (UploadFailed("421"), "upload"),
        (ForwardFailed("exchange 'x' missing"), "forward"),
    ],
)
def test_crash_notice_fields(crash: TaskCrash, kind: str) -> None:
    notice = crash_notice(context(), crash)

    assert notice["event"] == "crashed"
    assert notice["error"] == {"kind": kind, "detail": crash.detail}
    assert kind in notice["logMessage"]
    assert crash.detail in notice["logMessage"]
    assert notice["nodeId"] == "node-7"
    assert notice["taskId"] == "sub-2031"
    assert notice["course"] == {"code": "CS101"}
    assert notice["stage"] == {"exchange": "processing-exchange", "routingKey": "python-check"}
    assert_timestamp_is_recent_utc(notice["timestamp"])
    assert "rawBody" not in notice


def test_malformed_crash_notice_carries_raw_body_and_errors() -> None:
    body = encode(message(timeout="soon"))
    with pytest.raises(MalformedTask) as caught:
        parse_task(body)

    notice = crash_notice(NoticeContext("node-7", {}), caught.value)

    assert notice["error"]["kind"] == "malformed"
    assert notice["error"]["errors"] == [
        {"path": "$.timeout", "message": "Input should be a valid number"}
    ]
    assert notice["rawBody"] == body.decode()
    assert notice["rawBodyTruncated"] is False
    assert notice["stage"] is None


def test_malformed_crash_notice_truncates_and_survives_bad_utf8() -> None:
    body = b"\xff" + b"a" * (RAW_BODY_LIMIT * 2)
    with pytest.raises(MalformedTask) as caught:
        parse_task(body)

    notice = crash_notice(NoticeContext("node-7", {}), caught.value)

    assert notice["rawBodyTruncated"] is True
    assert notice["rawBody"] == "\ufffd" + "a" * (RAW_BODY_LIMIT - 1)
    json.dumps(notice)  # still a JSON body


# --- settings ----------------------------------------------------------------------------

OPERATOR_FILE = {
    "MESSAGE_BROKER_HOST": "rabbit.lab.example",
    "MESSAGE_BROKER_PORT": "5673",
    "MESSAGE_BROKER_USERNAME": "node",
    "MESSAGE_BROKER_PASSWORD": "s3cret",
    "MESSAGE_BROKER_LOGS_EXCHANGE": "logs-exchange",
    "MESSAGE_BROKER_LOGS_ROUTING_KEY": "logs",
    "MESSAGE_BROKER_CRASH_EXCHANGE": "crash-exchange",
    "MESSAGE_BROKER_CRASH_ROUTING_KEY": "crash",
    "MESSAGE_BROKER_CONSUMPTION_QUEUE": "python-check",
    "MESSAGE_BROKER_PREFETCH_COUNT": "4",
    "MESSAGE_BROKER_REQUEUE_ON_REJECT": "true",
    "REMOTE_STORAGE_HOST": "ftp.lab.example",
    "REMOTE_STORAGE_PORT": "2121",
    "REMOTE_STORAGE_USERNAME": "ftpuser",
    "REMOTE_STORAGE_PASSWORD": "ftppass",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No node variable leaks in from the developer's or CI's environment."""
    for name in list(os.environ):
        if name.startswith(("MESSAGE_BROKER_", "REMOTE_STORAGE_", "ULOS_")):
            monkeypatch.delenv(name)
    return monkeypatch


def env_file(tmp_path: Path, values: dict[str, str], *, extra: str = "") -> Path:
    path = tmp_path / "node.env"
    lines = [f"export {name}={value}" for name, value in values.items()]
    path.write_text("# an operator's node file\n" + "\n".join(lines) + "\n" + extra)
    return path


def test_settings_from_an_export_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = load_settings(env_file(tmp_path, OPERATOR_FILE))

    assert settings.broker_host == "rabbit.lab.example"
    assert settings.broker_port == 5673
    assert settings.broker_username == "node"
    assert settings.broker_password.get_secret_value() == "s3cret"
    assert settings.logs_exchange == "logs-exchange"
    assert settings.logs_routing_key == "logs"
    assert settings.crash_exchange == "crash-exchange"
    assert settings.crash_routing_key == "crash"
    assert settings.consumption_queue == "python-check"
    assert settings.prefetch_count == 4
    assert settings.requeue_on_reject is True
    assert settings.storage_host == "ftp.lab.example"
    assert settings.storage_port == 2121
    assert settings.storage_username == "ftpuser"
    assert settings.storage_password.get_secret_value() == "ftppass"
    assert settings.concurrency == 4
    assert "s3cret" not in repr(settings)


def test_settings_quoted_values_and_prefetch_zero(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    values = {
        **OPERATOR_FILE,
        "MESSAGE_BROKER_PASSWORD": '"pass word#1"',
        "MESSAGE_BROKER_PREFETCH_COUNT": "0",
        "MESSAGE_BROKER_REQUEUE_ON_REJECT": "false",
        "ULOS_MAX_IN_FLIGHT": "3",
    }

    settings = load_settings(env_file(tmp_path, values))

    assert settings.broker_password.get_secret_value() == "pass word#1"
    assert settings.prefetch_count == 0
    assert settings.requeue_on_reject is False
    assert settings.concurrency == 3


def test_environment_wins_over_the_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("MESSAGE_BROKER_HOST", "override.example")

    settings = load_settings(env_file(tmp_path, OPERATOR_FILE))

    assert settings.broker_host == "override.example"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MESSAGE_BROKER_PORT", "amqp"),
        ("MESSAGE_BROKER_PORT", "70000"),
        ("MESSAGE_BROKER_PREFETCH_COUNT", "-1"),
        ("MESSAGE_BROKER_REQUEUE_ON_REJECT", "maybe"),
        ("REMOTE_STORAGE_PORT", "0"),
        ("ULOS_MAX_IN_FLIGHT", "0"),
        ("ULOS_LOG_FORMAT", "xml"),
    ],
)
def test_bad_value_names_the_variable(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, name: str, value: str
) -> None:
    path = env_file(tmp_path, {**OPERATOR_FILE, name: value})

    with pytest.raises(ConfigError) as caught:
        load_settings(path)

    text = str(caught.value)
    assert text.startswith(f"{name}:")
    assert value in text
    assert "\n" not in text


def test_bad_value_in_the_environment_names_the_variable(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("MESSAGE_BROKER_PORT", "five")

    with pytest.raises(ConfigError, match=r"^MESSAGE_BROKER_PORT: "):
        load_settings(env_file(tmp_path, OPERATOR_FILE))


def test_missing_required_variable_is_named(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    values = {k: v for k, v in OPERATOR_FILE.items() if k != "MESSAGE_BROKER_CONSUMPTION_QUEUE"}

    with pytest.raises(ConfigError) as caught:
        load_settings(env_file(tmp_path, values))

    assert "MESSAGE_BROKER_CONSUMPTION_QUEUE" in str(caught.value)
    assert "MESSAGE_BROKER_HOST" not in str(caught.value)


def test_missing_env_file_is_a_config_error(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no such file"):
        load_settings(tmp_path / "absent.env")


# --- executor registry -------------------------------------------------------------------


async def _never_runs(task_dir: Path) -> int:
    raise AssertionError("registry tests do not run containers")


def docker_executor(spec: DockerExecutorSpec) -> DockerExecutor:
    return DockerExecutor(spec, FakeEngine(_never_runs), "node-1")


@pytest.fixture(scope="module")
def shipped() -> Registry:
    return load_registry(SHIPPED_REGISTRY, docker_executor)


def builtin(registry: Registry, routing_key: str) -> BuiltinExecutor:
    executor = registry.select(routing_key)
    assert isinstance(executor, BuiltinExecutor), f"{routing_key} → {executor!r}"
    return executor


@pytest.mark.parametrize(
    ("routing_key", "name", "behaviour"),
    [
        ("skip", "skip", Behaviour.PASS),
        ("pass", "pass", Behaviour.PASS),
        ("fail", "fail", Behaviour.FAIL),
        ("crash", "crash", Behaviour.CRASH),
        ("testing-3", "pass", Behaviour.PASS),
        ("testing-", "pass", Behaviour.PASS),
        ("testing-3-fail", "fail", Behaviour.FAIL),
        ("testing-3-crash", "crash", Behaviour.CRASH),
    ],
)
def test_shipped_registry_routes(
    shipped: Registry, routing_key: str, name: str, behaviour: Behaviour
) -> None:
    executor = builtin(shipped, routing_key)

    assert executor.name == name
    assert executor.behaviour is behaviour
    assert executor.on_timeout is TimeoutPolicy.CRASH


def test_shipped_skip_has_no_delay_and_the_others_fit_a_10_s_timeout(shipped: Registry) -> None:
    assert builtin(shipped, "skip").delay_seconds == 0
    for key in ("pass", "fail", "crash"):
        assert 0 < builtin(shipped, key).delay_seconds < 10


@pytest.mark.parametrize("routing_key", ["python-check-2", "Pass", "skip2", "testing", ""])
def test_shipped_registry_has_no_executor_for_other_stages(
    shipped: Registry, routing_key: str
) -> None:
    assert shipped.select(routing_key) is None


@pytest.mark.parametrize(
    ("routing_key", "outcome"),
    [("skip", Outcome.PASS), ("pass", Outcome.PASS), ("fail", Outcome.FAIL)],
)
async def test_shipped_builtins_decide(
    shipped: Registry, tmp_path: Path, routing_key: str, outcome: Outcome
) -> None:
    executor = dataclasses.replace(builtin(shipped, routing_key), delay_seconds=0)
    stage = RoutingNode(exchange="e", routing_key=routing_key)

    result = await executor.run(tmp_path, stage)

    assert result.outcome is outcome
    assert routing_key in result.output
    assert list(tmp_path.iterdir()) == []  # built-ins touch no files


async def test_shipped_crash_builtin_crashes(shipped: Registry, tmp_path: Path) -> None:
    executor = dataclasses.replace(builtin(shipped, "testing-3-crash"), delay_seconds=0)

    with pytest.raises(ExecutionCrashed):
        await executor.run(tmp_path, RoutingNode(exchange="e", routing_key="testing-3-crash"))


@pytest.mark.parametrize(
    ("routing_key", "image", "rule"),
    [
        ("python-check", "ulos-py/python-check", "exit-code"),
        ("pytest-grader", "ulos-py/pytest-grader", "exit-code"),
        ("gcode-check", "ulos-py/gcode-check", "marker:results/PASSED"),
    ],
)
def test_shipped_registry_routes_lab_stages_to_sandboxed_containers(
    shipped: Registry, routing_key: str, image: str, rule: str
) -> None:
    executor = shipped.select(routing_key)

    assert isinstance(executor, DockerExecutor)
    assert executor.spec.settings.image == image
    assert executor.spec.rule.describe() == rule
    limits = executor.spec.settings.limits
    assert not limits.network and limits.drop_capabilities and limits.no_new_privileges
    assert limits.user != "0:0"


def test_registry_first_match_wins() -> None:
    first = BuiltinExecutor("first", Behaviour.PASS)
    second = BuiltinExecutor("second", Behaviour.FAIL)
    registry = Registry((("lab-*", first), ("lab-check", second), ("*", second)))

    assert registry.select("lab-check") is first
    assert registry.select("other") is second


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(text)
    return path


VALID_EXECUTOR = '[executor.p]\nkind = "builtin"\nbehaviour = "pass"\n'
VALID_ROUTE = '[[route]]\nstage = "p"\nexecutor = "p"\n'


def test_registry_with_on_timeout_fail(tmp_path: Path) -> None:
    path = write(tmp_path, VALID_ROUTE + VALID_EXECUTOR + 'on_timeout = "fail"\n')

    executor = builtin(load_registry(path, docker_executor), "p")

    assert executor.on_timeout is TimeoutPolicy.FAIL


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        pytest.param("[[route]\nstage = ", "TOML", id="not-toml"),
        pytest.param(VALID_EXECUTOR, "route", id="no-routes"),
        pytest.param(VALID_ROUTE, "executor", id="no-executors"),
        pytest.param(
            '[[route]]\nstage = "p"\nexecutor = "ghost"\n' + VALID_EXECUTOR,
            "ghost",
            id="unknown-executor",
        ),
        pytest.param(VALID_ROUTE + VALID_EXECUTOR.replace("builtin", "magic"), "kind", id="kind"),
        pytest.param(
            VALID_ROUTE + VALID_EXECUTOR.replace('"pass"', '"maybe"'),
            "behaviour",
            id="bad-behaviour",
        ),
        pytest.param(
            VALID_ROUTE + VALID_EXECUTOR + "delay_seconds = -1\n", "delay", id="negative-delay"
        ),
        pytest.param(
            VALID_ROUTE + VALID_EXECUTOR + 'on_timeout = "ignore"\n', "on_timeout", id="bad-policy"
        ),
        pytest.param(VALID_ROUTE + VALID_EXECUTOR + "colour = 1\n", "colour", id="unknown-key"),
        pytest.param(
            VALID_ROUTE.replace('stage = "p"', 'stage = ""') + VALID_EXECUTOR,
            "stage",
            id="empty-stage",
        ),
    ],
)
def test_broken_registry_is_a_config_error(tmp_path: Path, text: str, hint: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ConfigError) as caught:
        load_registry(path, docker_executor)

    assert str(path) in str(caught.value)
    assert hint in str(caught.value)


def test_missing_registry_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_registry(tmp_path / "absent.toml", docker_executor)


# --- sample messages ---------------------------------------------------------------------

SAMPLES = Path(__file__).resolve().parents[2] / "testing-messages"


def test_every_sample_message_has_an_expected_path_and_a_row_in_the_readme() -> None:
    expected = tomllib.loads((SAMPLES / "expected.toml").read_text())
    readme = (SAMPLES / "README.md").read_text()

    messages = {path.stem for path in SAMPLES.glob("*.json")}
    assert messages == set(expected)
    for name in messages:
        assert f"[`{name}.json`]({name}.json)" in readme
    for name, spec in expected.items():
        if "submission" in spec:
            assert (SAMPLES.parent / spec["submission"]).is_dir(), name
