"""Secrets stay secret: no password from the configuration appears in a node's log lines
(ours through structlog, and the libraries' through logging, down to DEBUG), in a log or
crash notice, or in an error, whatever fails: a wrong password, an unreachable server, a
certificate not trusted.

Every password here is distinctive (`s3cr3t-<uuid>`), and each test looks for all of them,
the right ones and the wrong ones, in everything it saw.
"""

from __future__ import annotations

import asyncio
import json
import logging
import traceback
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import structlog
from aio_pika.abc import AbstractRobustConnection

from tests.support.harness import (
    Pipeline,
    make_zip,
    node_settings,
    pipeline,
    running_node,
    stage,
    task,
)
from tests.support.ports import free_port
from tests.support.services import Broker, FtpServer, Names
from tests.support.tls_servers import Certificates, TlsBroker, secret
from ulos_py.adapters import rabbitmq
from ulos_py.errors import BrokerUnavailable, ConfigError, UlosError
from ulos_py.node import run_node

pytestmark = pytest.mark.timeout(90)


class Witness:
    """Everything a test saw: log events, library log records, notices, errors."""

    def __init__(self, caplog: pytest.LogCaptureFixture, events: list[dict[str, Any]]) -> None:
        self._caplog = caplog
        self.events = events
        self.notices: list[dict[str, Any]] = []
        self.errors: list[str] = []

    def error(self, exc: BaseException) -> None:
        """The error's message and its whole chain, as a traceback would show them."""
        self.errors.append("".join(traceback.format_exception(exc)))

    def assert_none_of(self, *secrets: str) -> None:
        texts = {
            "log events": [repr(event) for event in self.events],
            "library log": [self._caplog.text],
            "notices": [json.dumps(notice) for notice in self.notices],
            "errors": self.errors,
        }
        for where, items in texts.items():
            for text in items:
                for value in secrets:
                    assert value not in text, f"a password in the {where}: {text}"


@pytest.fixture
def witness(caplog: pytest.LogCaptureFixture) -> Iterator[Witness]:
    caplog.set_level(logging.DEBUG)
    with structlog.testing.capture_logs() as events:
        yield Witness(caplog, events)


@pytest.fixture
async def line(names: Names, amqp: AbstractRobustConnection) -> AsyncIterator[Pipeline]:
    async with pipeline(names, amqp) as created:
        yield created


@pytest.fixture
async def tls_line(names: Names, tls_broker: TlsBroker) -> AsyncIterator[Pipeline]:
    connection = await aio_pika.connect_robust(tls_broker.url)
    try:
        async with pipeline(names, connection) as created:
            yield created
    finally:
        await connection.close()


async def notices_until(line: Pipeline, task_id: str, witness: Witness) -> None:
    """Every log notice of the task up to its settling, and every crash notice so far."""
    witness.notices += await line.logs_until(task_id, "rejected", timeout=20)
    while not line.empty("crashes"):
        witness.notices.append(await line.next_json("crashes"))


def tree(names: Names, key: str = "skip") -> dict[str, Any]:
    return stage(names.exchange, key, success=stage(names.exchange, "next-key"))


# --- a node at work ------------------------------------------------------------------------


async def test_a_node_over_tls_shows_no_password(
    tls_line: Pipeline,
    names: Names,
    tls_broker: TlsBroker,
    ftps_server: FtpServer,
    tls_certificates: Certificates,
    tmp_path: Path,
    witness: Witness,
) -> None:
    """A task that passes, one whose file is missing, one whose executor crashes."""
    path = f"/{names.prefix}/ok.zip"
    ftps_server.put(path, make_zip({"a.txt": "a"}))
    settings = node_settings(
        names,
        tls_broker,
        ftps_server,
        tmp_path,
        **tls_broker.values(),
        REMOTE_STORAGE_TLS="true",
        REMOTE_STORAGE_TLS_CA_FILE=tls_certificates.ca_file,
    )
    async with running_node(settings):
        await tls_line.publish(task("t-ok", path, tree(names)))
        witness.notices += await tls_line.logs_until("t-ok", "acked")
        await tls_line.publish(task("t-missing", f"/{names.prefix}/none.zip", tree(names)))
        await notices_until(tls_line, "t-missing", witness)
        await tls_line.publish(task("t-crash", path, tree(names, "crash")))
        await notices_until(tls_line, "t-crash", witness)

    assert {n["error"]["kind"] for n in witness.notices if "error" in n} >= {
        "download",
        "execution",
    }
    assert witness.events  # the node did log
    witness.assert_none_of(tls_broker.password, ftps_server.password)


@pytest.mark.parametrize("server", ["secret_ftp_server", "ftps_server"])
async def test_a_failed_ftp_login_stops_the_node_at_start_and_shows_no_password(
    line: Pipeline,
    names: Names,
    broker: Broker,
    tls_certificates: Certificates,
    tmp_path: Path,
    witness: Witness,
    request: pytest.FixtureRequest,
    server: str,
) -> None:
    ftp: FtpServer = request.getfixturevalue(server)
    wrong = secret()
    tls = (
        {"REMOTE_STORAGE_TLS": "true", "REMOTE_STORAGE_TLS_CA_FILE": tls_certificates.ca_file}
        if server == "ftps_server"
        else {}
    )
    settings = node_settings(names, broker, ftp, tmp_path, REMOTE_STORAGE_PASSWORD=wrong, **tls)

    with pytest.raises(ConfigError) as caught:
        await asyncio.wait_for(run_node(settings, asyncio.Event()), 20)

    text = str(caught.value)
    assert "\n" not in text
    assert f"the FTP server at {ftp.host}:{ftp.port} refused user {ftp.username!r}" in text
    assert "530" in text
    assert "REMOTE_STORAGE_PASSWORD" in text
    assert await line.depth() == 0  # it never consumed
    witness.error(caught.value)
    witness.assert_none_of(wrong, ftp.password)


async def test_an_unreachable_ftp_server_shows_no_password(
    line: Pipeline,
    names: Names,
    broker: Broker,
    secret_ftp_server: FtpServer,
    tmp_path: Path,
    witness: Witness,
) -> None:
    settings = node_settings(
        names, broker, secret_ftp_server, tmp_path, REMOTE_STORAGE_PORT=free_port()
    )
    async with running_node(settings):
        await line.publish(task("t-away", f"/{names.prefix}/x.zip", tree(names)))
        await notices_until(line, "t-away", witness)

    errors = [n["error"] for n in witness.notices if "error" in n]  # crash and log notice
    assert errors
    assert {error["kind"] for error in errors} == {"download"}
    assert any(event["event"] == "storage_retry" for event in witness.events)
    witness.assert_none_of(secret_ftp_server.password)


async def test_a_node_waiting_for_the_broker_shows_no_password(
    names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path, witness: Witness
) -> None:
    password = secret()
    settings = node_settings(
        names,
        broker,
        ftp_server,
        tmp_path,
        MESSAGE_BROKER_PORT=free_port(),
        MESSAGE_BROKER_PASSWORD=password,
    )
    stop = asyncio.Event()
    node = asyncio.create_task(run_node(settings, stop))
    await asyncio.sleep(2.5)  # the first attempt and one retry
    stop.set()
    await asyncio.wait_for(node, 10)

    waits = [event for event in witness.events if event["event"] == "broker_unreachable"]
    assert len(waits) >= 2
    witness.assert_none_of(password)


# --- errors --------------------------------------------------------------------------------


async def test_a_refused_broker_login_shows_no_password(
    names: Names, broker: Broker, ftp_server: FtpServer, tmp_path: Path, witness: Witness
) -> None:
    password = secret()
    settings = node_settings(names, broker, ftp_server, tmp_path, MESSAGE_BROKER_PASSWORD=password)

    with pytest.raises(ConfigError) as caught:
        await asyncio.wait_for(run_node(settings, asyncio.Event()), 20)

    assert "MESSAGE_BROKER_PASSWORD" in str(caught.value)
    witness.error(caught.value)
    witness.assert_none_of(password)


@pytest.mark.parametrize("failure", ["unreachable", "wrong CA", "plain to TLS", "TLS to plain"])
async def test_broker_connection_errors_show_no_password(
    names: Names,
    broker: Broker,
    tls_broker: TlsBroker,
    tls_certificates: Certificates,
    ftp_server: FtpServer,
    tmp_path: Path,
    witness: Witness,
    failure: str,
) -> None:
    password = secret()
    tls = tls_broker.values()
    cases: dict[str, tuple[Broker, dict[str, Any]]] = {
        "unreachable": (broker, {"MESSAGE_BROKER_PORT": free_port()}),
        "wrong CA": (
            tls_broker,
            {**tls, "MESSAGE_BROKER_TLS_CA_FILE": tls_certificates.other_ca_file},
        ),
        "plain to TLS": (tls_broker, {"MESSAGE_BROKER_PORT": tls_broker.port}),
        "TLS to plain": (broker, {**tls, "MESSAGE_BROKER_PORT": broker.port}),
    }
    where, values = cases[failure]
    values = {
        **values,
        "MESSAGE_BROKER_HOST": where.host,
        "MESSAGE_BROKER_USERNAME": where.username,
        "MESSAGE_BROKER_PASSWORD": password,
    }
    settings = node_settings(names, broker, ftp_server, tmp_path, **values)
    address = rabbitmq.BrokerAddress.of(settings, "ulos-py secrets test")

    with pytest.raises((ConfigError, BrokerUnavailable)) as caught:
        await rabbitmq.connect(address)

    assert isinstance(caught.value, UlosError)
    witness.error(caught.value)
    witness.errors.append(repr(address))
    witness.assert_none_of(password, tls_broker.password)
