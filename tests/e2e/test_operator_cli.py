"""The operator commands as an operator runs them: topology, storage, publish, validate,
schema — real `ulos-py` processes against the real broker and FTP server."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path
from typing import Any

import aio_pika
import jsonschema
import pytest

from tests.support.cli import ROOT, settings_env
from tests.support.harness import next_message
from tests.support.sample_chain import broker_env
from tests.support.services import Broker, FtpServer, Names

pytestmark = pytest.mark.timeout(120)

MESSAGES = ROOT / "testing-messages"


def ulos(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ulos_py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, *words: str) -> None:
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0]


@pytest.fixture
def broker_vars(broker: Broker) -> dict[str, str]:
    return settings_env(broker_env(broker))


@pytest.fixture
def ftp_vars(broker: Broker, ftp_server: FtpServer) -> dict[str, str]:
    return settings_env(
        {
            **broker_env(broker),
            "REMOTE_STORAGE_HOST": ftp_server.host,
            "REMOTE_STORAGE_PORT": str(ftp_server.port),
            "REMOTE_STORAGE_USERNAME": ftp_server.username,
            "REMOTE_STORAGE_PASSWORD": ftp_server.password,
        }
    )


# --- topology ----------------------------------------------------------------------------


def topology_file(tmp_path: Path, names: Names, max_length: int = 1000) -> Path:
    path = tmp_path / "topology.toml"
    path.write_text(
        f"""
[[exchange]]
name = "{names.exchange}"

[[exchange]]
name = "{names.prefix}.dead"
type = "fanout"

[[queue]]
name = "{names.queue("work")}"
max_priority = 10
max_length = {max_length}
dead_letter_exchange = "{names.prefix}.dead"
bind = [{{ exchange = "{names.exchange}", routing_key = "work" }}]

[[queue]]
name = "{names.queue("quorum")}"
type = "quorum"
bind = [{{ exchange = "{names.exchange}", routing_key = "q" }}]

[[queue]]
name = "{names.queue("dead")}"
bind = [{{ exchange = "{names.prefix}.dead", routing_key = "" }}]
"""
    )
    return path


async def test_topology_apply_twice_changes_nothing_and_declares_what_the_file_says(
    tmp_path: Path, names: Names, broker_vars: dict[str, str], amqp: Any
) -> None:
    path = topology_file(tmp_path, names)

    first = ulos("topology", "apply", str(path), env=broker_vars)
    second = ulos("topology", "apply", str(path), env=broker_vars)

    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert "declared 2 exchanges and 3 queues" in second.stdout
    channel = await amqp.channel()
    exchange = await channel.get_exchange(names.exchange)
    await exchange.publish(aio_pika.Message(b"{}"), routing_key="work")  # routed, confirmed
    await exchange.publish(aio_pika.Message(b"{}"), routing_key="q")
    work = await channel.get_queue(names.queue("work"))
    quorum = await channel.get_queue(names.queue("quorum"))
    assert (await work.declare()).message_count == 1
    assert (await quorum.declare()).message_count == 1
    rejected = await work.get()
    await rejected.reject(requeue=False)  # dead-lettered through the fanout exchange
    dead = await channel.get_queue(names.queue("dead"))
    assert (await next_message(dead)).body == b"{}"
    for name in ("work", "quorum", "dead"):
        await channel.queue_delete(names.queue(name))
    for exchange_name in (names.exchange, f"{names.prefix}.dead"):
        await channel.exchange_delete(exchange_name)


async def test_topology_conflict_is_one_clear_line(
    tmp_path: Path, names: Names, broker_vars: dict[str, str], amqp: Any
) -> None:
    assert (
        ulos("topology", "apply", str(topology_file(tmp_path, names)), env=broker_vars).returncode
        == 0
    )
    changed = topology_file(tmp_path, names, max_length=5)

    done = ulos("topology", "apply", str(changed), env=broker_vars)

    assert_one_line(done, 2, names.queue("work"), "different settings")
    channel = await amqp.channel()
    for name in ("work", "quorum", "dead"):
        await channel.queue_delete(names.queue(name))


def test_topology_show_prints_the_file_without_a_broker(tmp_path: Path, names: Names) -> None:
    done = ulos("topology", "show", str(topology_file(tmp_path, names)))

    assert done.returncode == 0, done.stderr
    assert f"exchange {names.exchange} (direct, durable)" in done.stdout
    assert names.queue("quorum") in done.stdout


# --- storage -----------------------------------------------------------------------------


def test_storage_upload_list_download(
    tmp_path: Path, ftp_vars: dict[str, str], ftp_server: FtpServer
) -> None:
    run = uuid.uuid4().hex[:8]
    folder = tmp_path / "submission"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "main.py").write_text("print(1)\n")
    (folder / "README.md").write_text("hi\n")

    uploaded = ulos("storage", "upload", str(folder), f"/ops-{run}/lab 1/alice.zip", env=ftp_vars)
    listed = ulos("storage", "list", f"/ops-{run}", "--recursive", env=ftp_vars)
    downloaded = ulos(
        "storage",
        "download",
        f"/ops-{run}/lab 1/alice.zip",
        str(tmp_path / "back.zip"),
        env=ftp_vars,
    )

    assert uploaded.returncode == 0, uploaded.stderr
    with zipfile.ZipFile(io.BytesIO(ftp_server.get(f"/ops-{run}/lab 1/alice.zip"))) as zf:
        files = sorted(n for n in zf.namelist() if not n.endswith("/"))
    assert files == ["README.md", "src/main.py"]
    assert listed.returncode == 0, listed.stderr
    assert f"/ops-{run}/lab 1/alice.zip" in listed.stdout
    assert "dir" in listed.stdout and "2 entries" in listed.stderr
    assert downloaded.returncode == 0, downloaded.stderr
    assert (tmp_path / "back.zip").read_bytes() == ftp_server.get(f"/ops-{run}/lab 1/alice.zip")


def test_storage_errors_are_one_line(tmp_path: Path, ftp_vars: dict[str, str]) -> None:
    missing = ulos("storage", "download", "/no/such.zip", str(tmp_path / "x.zip"), env=ftp_vars)
    no_dir = ulos("storage", "list", "/no-such-folder", env=ftp_vars)
    bad_password = ulos(
        "storage", "list", "/", env={**ftp_vars, "REMOTE_STORAGE_PASSWORD": "wrong"}
    )

    assert_one_line(missing, 1, "/no/such.zip")
    assert_one_line(no_dir, 1, "/no-such-folder")
    assert_one_line(bad_password, 1)
    assert "wrong" not in bad_password.stderr


# --- publish, validate, schema -----------------------------------------------------------


@pytest.fixture
async def inbox(names: Names, amqp: Any) -> Any:
    """An exchange with a queue bound to key `stage`, gone after the test."""
    channel = await amqp.channel()
    exchange = await channel.declare_exchange(names.exchange, auto_delete=True)
    queue = await channel.declare_queue(names.queue("inbox"), auto_delete=True)
    await queue.bind(exchange, "stage")
    yield queue
    await queue.delete(if_unused=False, if_empty=False)


def message_file(tmp_path: Path, names: Names, **fields: Any) -> Path:
    body = {
        "taskId": "load",
        "taskOwnerId": "ops",
        "filePath": "/load/{n}.zip",
        "timeout": 10,
        "routingTree": {"exchange": names.exchange, "routingKey": "stage"},
        **fields,
    }
    path = tmp_path / "message.json"
    path.write_text(json.dumps(body))
    return path


async def test_publish_count_sends_templated_copies_with_progress(
    tmp_path: Path, names: Names, broker_vars: dict[str, str], inbox: Any
) -> None:
    done = ulos("publish", "--count", "150", str(message_file(tmp_path, names)), env=broker_vars)

    assert done.returncode == 0, done.stderr
    assert "sent 150 messages" in done.stdout
    assert "publishing" in done.stderr  # the progress bar
    bodies = []
    while (message := await inbox.get(fail=False)) is not None:
        bodies.append(json.loads(message.body))
        await message.ack()
    assert len(bodies) == 150
    assert {b["taskId"] for b in bodies} == {f"load-{n:03d}" for n in range(1, 151)}
    assert {b["filePath"] for b in bodies} == {f"/load/{n:03d}.zip" for n in range(1, 151)}


async def test_publish_refuses_an_invalid_message_and_sends_nothing(
    tmp_path: Path, names: Names, broker_vars: dict[str, str], inbox: Any
) -> None:
    done = ulos("publish", str(message_file(tmp_path, names, timeout="soon")), env=broker_vars)

    assert_one_line(done, 2, "$.timeout")
    assert (await inbox.declare()).message_count == 0


def test_publish_to_a_key_no_queue_takes_fails(
    tmp_path: Path, names: Names, broker_vars: dict[str, str], inbox: Any
) -> None:
    path = message_file(tmp_path, names)

    done = ulos("publish", "--routing-key", "nobody-listens", str(path), env=broker_vars)

    assert done.returncode == 1
    assert "not sent" in done.stderr


def test_validate_reports_every_problem_with_its_json_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps(
            {
                "taskId": "",
                "taskOwnerId": "s",
                "filePath": "/a.zip",
                "timeout": -1,
                "routingTree": {"exchange": "e", "successRoutingDecision": {"routingKey": 3}},
            }
        )
    )

    done = ulos("validate", str(MESSAGES / "pass.json"), str(bad))

    assert done.returncode == 1
    assert f"{MESSAGES / 'pass.json'}: ok" in done.stdout
    for path in (
        "$.taskId",
        "$.timeout",
        "$.routingTree.routingKey",
        "$.routingTree.successRoutingDecision.exchange",
        "$.routingTree.successRoutingDecision.routingKey",
    ):
        assert f"  {path}: " in done.stdout, done.stdout


def test_schema_accepts_every_sample_message_and_refuses_the_bad_one() -> None:
    done = ulos("schema")

    assert done.returncode == 0, done.stderr
    schema = json.loads(done.stdout)
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    samples = sorted(MESSAGES.glob("*.json"))
    assert len(samples) >= 20
    for sample in samples:
        errors = list(validator.iter_errors(json.loads(sample.read_text())))
        if sample.stem == "bad-format":
            assert errors, "bad-format.json must break the schema"
        else:
            assert errors == [], (sample.name, [e.message for e in errors])
