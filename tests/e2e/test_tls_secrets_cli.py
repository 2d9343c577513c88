"""The real `ulos-py` processes with TLS and with failing credentials: the node and the
operator commands work over AMQPS and explicit FTPS, a TLS mismatch is one line, and no
password from the configuration appears in anything they print (the node's JSON log lines
included), whatever fails."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest

from tests.support.cli import ROOT, StartCli, settings_env
from tests.support.harness import Pipeline, make_zip, node_values, pipeline, stage, task, zip_names
from tests.support.ports import free_port
from tests.support.services import Broker, FtpServer, Names
from tests.support.tls_servers import Certificates, TlsBroker, secret

pytestmark = pytest.mark.timeout(120)

MESSAGE = ROOT / "testing-messages" / "crash.json"


def ulos(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ulos_py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )


def assert_no_secret(output: str, *secrets: str) -> None:
    for value in secrets:
        assert value not in output, output


def _progress(line: str) -> bool:
    try:
        record = json.loads(line)
    except ValueError:
        return False
    return isinstance(record, dict) and record.get("level") in ("debug", "info")


def assert_one_line(done: subprocess.CompletedProcess[str], status: int, *words: str) -> str:
    assert done.returncode == status, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    # The node's own progress before the failure (JSON log records at info, like
    # broker_connected) is no error line; the error is the one line that remains.
    lines = [line for line in done.stderr.strip().splitlines() if not _progress(line)]
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0]
    return lines[0]


def ftps_values(ftps: FtpServer, certificates: Certificates, **extra: Any) -> dict[str, Any]:
    return {
        "REMOTE_STORAGE_HOST": ftps.host,
        "REMOTE_STORAGE_PORT": ftps.port,
        "REMOTE_STORAGE_USERNAME": ftps.username,
        "REMOTE_STORAGE_PASSWORD": ftps.password,
        "REMOTE_STORAGE_TLS": "true",
        "REMOTE_STORAGE_TLS_CA_FILE": certificates.ca_file,
        **extra,
    }


@pytest.fixture
async def tls_line(names: Names, tls_broker: TlsBroker) -> AsyncIterator[Pipeline]:
    connection = await aio_pika.connect_robust(tls_broker.url)
    try:
        async with pipeline(names, connection) as created:
            yield created
    finally:
        await connection.close()


def node_env(
    names: Names,
    tls_broker: TlsBroker,
    ftps: FtpServer,
    certificates: Certificates,
    tmp_path: Path,
    **extra: Any,
) -> dict[str, str]:
    values = node_values(
        names,
        tls_broker,
        ftps,
        tmp_path / "work",
        **tls_broker.values(),
        **ftps_values(ftps, certificates),
        ULOS_PROCESSES=1,
    )
    return settings_env({**values, **extra})


async def stopped(node: subprocess.Popen[str]) -> tuple[int, list[dict[str, Any]], str]:
    """SIGTERM, then the exit status, the JSON log lines and the whole of stderr."""
    node.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(node.wait, 30)
    assert node.stderr is not None
    text = node.stderr.read()
    return code, [json.loads(line) for line in text.splitlines() if line.strip()], text


# --- the node process ----------------------------------------------------------------------


async def test_a_node_process_works_over_tls_and_logs_no_password(
    names: Names,
    tls_broker: TlsBroker,
    ftps_server: FtpServer,
    tls_certificates: Certificates,
    tmp_path: Path,
    tls_line: Pipeline,
    start_cli: StartCli,
) -> None:
    path = f"/{names.prefix}/proc.zip"
    ftps_server.put(path, make_zip({"a.txt": "x"}))
    tree = stage(names.exchange, "skip", success=stage(names.exchange, "next-key"))
    env = node_env(names, tls_broker, ftps_server, tls_certificates, tmp_path)
    node = start_cli("node", env=env)
    await tls_line.publish(task("t-proc", path, tree))
    forwarded = await tls_line.next_json("next", timeout=30)
    await tls_line.publish(task("t-gone", f"/{names.prefix}/gone.zip", tree))
    crash = await tls_line.next_json("crashes", timeout=30)
    notices = await tls_line.logs_until("t-gone", "rejected")
    code, log_lines, stderr = await stopped(node)

    assert forwarded["taskId"] == "t-proc"
    assert f"output_{names.exchange}_skip.txt" in zip_names(ftps_server.get(path))
    assert crash["error"]["kind"] == "download"
    assert code == 0
    assert {"consuming", "stopped"} <= {entry["event"] for entry in log_lines}
    seen = stderr + json.dumps([forwarded, crash, *notices])
    assert_no_secret(seen, tls_broker.password, ftps_server.password)


async def test_a_node_with_a_wrong_ftp_password_stops_with_one_line(
    names: Names,
    tls_broker: TlsBroker,
    ftps_server: FtpServer,
    tls_certificates: Certificates,
    tmp_path: Path,
    tls_line: Pipeline,
) -> None:
    wrong = secret()
    env = node_env(
        names, tls_broker, ftps_server, tls_certificates, tmp_path, REMOTE_STORAGE_PASSWORD=wrong
    )
    await tls_line.publish(task("t-login", f"/{names.prefix}/x.zip", tls_tree(names)))
    done = await asyncio.to_thread(ulos, "node", env=env)
    supervised = await asyncio.to_thread(ulos, "node", "--processes", "2", env=env)

    assert_one_line(done, 2, "configuration error", "530", "REMOTE_STORAGE_PASSWORD")
    assert supervised.returncode == 2
    assert await tls_line.depth() == 1  # the task waits for a node that can fetch it
    seen = done.stdout + done.stderr + supervised.stdout + supervised.stderr
    assert_no_secret(seen, wrong, ftps_server.password, tls_broker.password)


async def test_a_node_that_does_not_trust_the_ftps_certificate_stops_with_one_line(
    names: Names,
    tls_broker: TlsBroker,
    ftps_server: FtpServer,
    tls_certificates: Certificates,
    tmp_path: Path,
    tls_line: Pipeline,
) -> None:
    env = node_env(
        names,
        tls_broker,
        ftps_server,
        tls_certificates,
        tmp_path,
        REMOTE_STORAGE_TLS_CA_FILE=tls_certificates.other_ca_file,
    )
    done = await asyncio.to_thread(ulos, "node", env=env)

    where = f"the FTP server at {ftps_server.host}:{ftps_server.port}"
    assert_one_line(done, 2, "configuration error", where, "not trusted")
    assert "REMOTE_STORAGE_TLS_CA_FILE" in done.stderr
    assert_no_secret(done.stdout + done.stderr, tls_broker.password, ftps_server.password)


def tls_tree(names: Names) -> dict[str, Any]:
    return stage(names.exchange, "skip", success=stage(names.exchange, "next-key"))


def test_a_node_with_a_wrong_ca_stops_with_one_line(
    names: Names,
    tls_broker: TlsBroker,
    ftps_server: FtpServer,
    tls_certificates: Certificates,
    tmp_path: Path,
) -> None:
    env = node_env(
        names,
        tls_broker,
        ftps_server,
        tls_certificates,
        tmp_path,
        MESSAGE_BROKER_TLS_CA_FILE=tls_certificates.other_ca_file,
    )
    done = ulos("node", env=env)

    assert_one_line(done, 2, "configuration error", "not trusted", "MESSAGE_BROKER_TLS_CA_FILE")
    assert_no_secret(done.stdout + done.stderr, tls_broker.password, ftps_server.password)


def test_a_node_with_a_wrong_broker_password_stops_with_one_line(
    names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path
) -> None:
    password = secret()
    values = node_values(names, broker, ftp_server, tmp_path / "work", ULOS_PROCESSES=1)
    env = settings_env({**values, "MESSAGE_BROKER_PASSWORD": password})
    done = ulos("node", env=env)
    supervised = ulos("node", "--processes", "2", env=env)

    assert_one_line(done, 2, "MESSAGE_BROKER_PASSWORD")
    assert supervised.returncode == 2
    assert_no_secret(done.stdout + done.stderr + supervised.stdout + supervised.stderr, password)


async def test_a_node_waiting_for_the_broker_logs_no_password(
    names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path, start_cli: StartCli
) -> None:
    password = secret()
    values = node_values(names, broker, ftp_server, tmp_path / "work", ULOS_PROCESSES=1)
    env = settings_env(
        {**values, "MESSAGE_BROKER_PORT": free_port(), "MESSAGE_BROKER_PASSWORD": password}
    )
    node = start_cli("node", env=env)
    await asyncio.sleep(3)  # the first attempt and a retry
    code, log_lines, stderr = await stopped(node)

    assert code == 0
    assert [e for e in log_lines if e["event"] == "broker_unreachable"]
    assert_no_secret(stderr, password)


# --- operator commands ---------------------------------------------------------------------


def broker_command(names: Names, tmp_path: Path, command: str) -> list[str]:
    topology = tmp_path / "topology.toml"
    topology.write_text(f'[[exchange]]\nname = "{names.prefix}.x"\n')
    return {
        "publish": ["publish", "--no-validate", str(MESSAGE)],
        "topology": ["topology", "apply", str(topology)],
        "watch": [
            *("watch", "--logs-exchange", "a", "--logs-key", "b"),
            *("--crash-exchange", "c", "--crash-key", "d"),
        ],
    }[command]


@pytest.mark.parametrize("command", ["publish", "topology", "watch"])
def test_broker_commands_show_no_password(
    names: Names, broker: Broker, tmp_path: Path, command: str
) -> None:
    password = secret()
    args = broker_command(names, tmp_path, command)
    wrong = {
        "MESSAGE_BROKER_HOST": broker.host,
        "MESSAGE_BROKER_PORT": broker.port,
        "MESSAGE_BROKER_USERNAME": broker.username,
        "MESSAGE_BROKER_PASSWORD": password,
    }
    refused = ulos(*args, env=settings_env(wrong))
    away = ulos(*args, env=settings_env({**wrong, "MESSAGE_BROKER_PORT": free_port()}))

    assert_one_line(refused, 2, "refused user", "MESSAGE_BROKER_PASSWORD")
    assert_one_line(away, 1, "cannot reach the broker")
    assert_no_secret(refused.stdout + refused.stderr + away.stdout + away.stderr, password)


def storage_commands(names: Names, tmp_path: Path) -> list[list[str]]:
    local = tmp_path / "up.zip"
    local.write_bytes(make_zip({"a.txt": "a"}))
    remote = f"/{names.prefix}/up.zip"
    return [
        ["storage", "upload", str(local), remote],
        ["storage", "download", remote, str(tmp_path / "down.zip")],
        ["storage", "list", f"/{names.prefix}"],
    ]


@pytest.mark.parametrize("server", ["secret_ftp_server", "ftps_server"])
def test_storage_commands_show_no_password(
    names: Names,
    tls_certificates: Certificates,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    server: str,
) -> None:
    ftp: FtpServer = request.getfixturevalue(server)
    wrong = secret()
    values = ftps_values(ftp, tls_certificates, REMOTE_STORAGE_PASSWORD=wrong)
    if server != "ftps_server":
        values = {k: v for k, v in values.items() if "_TLS" not in k}
    commands = storage_commands(names, tmp_path)
    for args in commands:
        refused = ulos(*args, env=settings_env(values))
        assert_one_line(refused, 1, "530")
        assert_no_secret(refused.stdout + refused.stderr, wrong, ftp.password)
    # Unreachable: the same connect for every command, retried (the warnings say so).
    away = ulos(*commands[-1], env=settings_env({**values, "REMOTE_STORAGE_PORT": free_port()}))
    assert away.returncode == 1, away.stderr
    assert "Connect call failed" in away.stderr.strip().splitlines()[-1]
    assert "Traceback" not in away.stderr
    assert_no_secret(away.stdout + away.stderr, wrong, ftp.password)


# --- operator commands over TLS ------------------------------------------------------------


def test_storage_commands_work_over_ftps(
    names: Names, ftps_server: FtpServer, tls_certificates: Certificates, tmp_path: Path
) -> None:
    env = settings_env(ftps_values(ftps_server, tls_certificates))
    folder = tmp_path / "submission"
    folder.mkdir()
    (folder / "main.py").write_text("print('hi')\n")
    remote = f"/{names.prefix}/sub/alice.zip"

    uploaded = ulos("storage", "upload", str(folder), remote, env=env)
    listed = ulos("storage", "list", "-r", f"/{names.prefix}", env=env)
    downloaded = ulos("storage", "download", remote, str(tmp_path / "back.zip"), env=env)

    for done in (uploaded, listed, downloaded):
        assert done.returncode == 0, done.stderr
    assert zip_names(ftps_server.get(remote)) == {"main.py"}
    assert remote in listed.stdout
    assert (tmp_path / "back.zip").read_bytes() == ftps_server.get(remote)
    assert_no_secret(listed.stdout + listed.stderr, ftps_server.password)


async def test_topology_and_publish_work_over_amqps(
    names: Names, tls_broker: TlsBroker, tmp_path: Path
) -> None:
    queue = f"{names.prefix}.input"
    topology = tmp_path / "topology.toml"
    topology.write_text(
        f'[[exchange]]\nname = "{names.exchange}"\n\n[[queue]]\nname = "{queue}"\n'
        f'bind = [{{ exchange = "{names.exchange}", routing_key = "go" }}]\n'
    )
    message = tmp_path / "task.json"
    message.write_text(json.dumps(task("t-pub", "/x.zip", stage(names.exchange, "go"))))
    env = settings_env(tls_broker.values())

    applied = await asyncio.to_thread(ulos, "topology", "apply", str(topology), env=env)
    published = await asyncio.to_thread(ulos, "publish", str(message), env=env)

    assert applied.returncode == 0, applied.stderr
    assert published.returncode == 0, published.stderr
    connection = await aio_pika.connect_robust(tls_broker.url)
    try:
        channel = await connection.channel()
        got = await (await channel.get_queue(queue)).get(timeout=10)
        assert json.loads(got.body)["taskId"] == "t-pub"
        await channel.queue_delete(queue)
        await channel.exchange_delete(names.exchange)
    finally:
        await connection.close()
