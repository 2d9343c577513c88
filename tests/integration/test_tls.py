"""TLS against real servers with a certificate the tests make: AMQPS to a second RabbitMQ
node that listens for nothing else and wants a client certificate, explicit FTPS to a
pyftpdlib server that refuses a control or data connection without TLS.

That those servers accept the node at all proves the traffic is TLS; the failures prove
that a certificate is checked (chain and host name) and that a mismatch is one clear line,
at once, never a hang or a retry loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractRobustConnection

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
from tests.support.tls_servers import UNNAMED_HOST, Certificates, TlsBroker
from ulos_py.adapters import rabbitmq
from ulos_py.adapters.ftp import FtpAddress, FtpStorage, RetryPolicy
from ulos_py.errors import BrokerUnavailable, ConfigError, StorageRefused
from ulos_py.node import run_node
from ulos_py.settings import ConnectionSettings, TlsOptions

pytestmark = pytest.mark.timeout(90)


def ftps_values(certificates: Certificates) -> dict[str, object]:
    return {
        "REMOTE_STORAGE_TLS": "true",
        "REMOTE_STORAGE_TLS_CA_FILE": certificates.ca_file,
    }


@pytest.fixture
async def amqps(tls_broker: TlsBroker) -> AsyncIterator[AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(tls_broker.url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def line(names: Names, amqp: AbstractRobustConnection) -> AsyncIterator[Pipeline]:
    async with pipeline(names, amqp) as created:
        yield created


@pytest.fixture
async def tls_line(names: Names, amqps: AbstractRobustConnection) -> AsyncIterator[Pipeline]:
    async with pipeline(names, amqps) as created:
        yield created


def broker_address(broker: Broker, **tls: Any) -> rabbitmq.BrokerAddress:
    options = TlsOptions("MESSAGE_BROKER_TLS", **tls) if tls else None
    return rabbitmq.BrokerAddress(
        broker.host, broker.port, broker.username, broker.password, "ulos-py tls test", options
    )


def ftp_storage(ftp: FtpServer, tls: TlsOptions | None) -> FtpStorage:
    address = FtpAddress(ftp.host, ftp.port, ftp.username, ftp.password, tls)
    return FtpStorage(address, connections=1, retry=RetryPolicy(retries=2, first_delay=0.5))


# --- a whole task over AMQPS and FTPS ------------------------------------------------------


async def test_a_node_processes_a_task_over_amqps_and_ftps(
    tls_line: Pipeline,
    names: Names,
    tls_broker: TlsBroker,
    ftps_server: FtpServer,
    tls_certificates: Certificates,
    tmp_path: Path,
) -> None:
    path = f"/{names.prefix}/alice.zip"
    ftps_server.put(path, make_zip({"main.py": "print('hi')\n"}))
    tree = stage(names.exchange, "skip", success=stage(names.exchange, "next-key"))
    settings = node_settings(
        names,
        tls_broker,
        ftps_server,
        tmp_path,
        **tls_broker.values(),
        **ftps_values(tls_certificates),
    )
    logins = ftps_server.handler.logins
    async with running_node(settings):
        await tls_line.publish(task("t-tls", path, tree))
        forwarded = await tls_line.next_json("next")
        events = [n["event"] for n in await tls_line.logs_until("t-tls", "acked")]

    assert forwarded["taskId"] == "t-tls"
    assert forwarded["routingTree"] == {"exchange": names.exchange, "routingKey": "next-key"}
    assert events[:3] == ["received", "downloaded", "execution_started"]
    assert {"uploaded", "forwarded", "acked"} <= set(events)
    assert f"output_{names.exchange}_skip.txt" in zip_names(ftps_server.get(path))
    assert ftps_server.handler.logins > logins  # it was this server, which takes TLS only


async def test_operator_connections_use_tls_from_the_settings(
    names: Names, tls_broker: TlsBroker, ftps_server: FtpServer, tls_certificates: Certificates
) -> None:
    settings = ConnectionSettings(
        **tls_broker.values(),
        REMOTE_STORAGE_HOST=ftps_server.host,
        REMOTE_STORAGE_PORT=ftps_server.port,
        REMOTE_STORAGE_USERNAME=ftps_server.username,
        REMOTE_STORAGE_PASSWORD=ftps_server.password,
        **ftps_values(tls_certificates),
    )
    connection = await rabbitmq.connect(rabbitmq.BrokerAddress.of(settings, "ulos-py tls test"))
    await connection.close()
    storage = FtpStorage(FtpAddress.of(settings), connections=1, retry=RetryPolicy())
    try:
        await storage.list("/")
    finally:
        await storage.close()


# --- AMQPS: what is checked ----------------------------------------------------------------


async def test_a_wrong_ca_stops_the_node_with_one_line(
    names: Names,
    tls_broker: TlsBroker,
    ftps_server: FtpServer,
    tls_certificates: Certificates,
    tmp_path: Path,
) -> None:
    settings = node_settings(
        names,
        tls_broker,
        ftps_server,
        tmp_path,
        **{**tls_broker.values(), "MESSAGE_BROKER_TLS_CA_FILE": tls_certificates.other_ca_file},
    )
    with pytest.raises(ConfigError) as caught:
        await asyncio.wait_for(run_node(settings, asyncio.Event()), 20)

    text = str(caught.value)
    assert "\n" not in text
    assert "not trusted" in text
    assert "MESSAGE_BROKER_TLS_CA_FILE" in text
    assert f"{tls_broker.host}:{tls_broker.port}" in text


async def test_the_host_name_is_checked(
    tls_broker: TlsBroker, tls_certificates: Certificates
) -> None:
    files = tls_certificates
    unnamed = Broker(UNNAMED_HOST, tls_broker.port, tls_broker.username, tls_broker.password)
    client = {"cert_file": files.client_cert_file, "key_file": files.client_key_file}

    with pytest.raises(ConfigError) as caught:
        await rabbitmq.connect(broker_address(unnamed, ca_file=files.ca_file, **client))
    assert f"certificate is not valid for '{UNNAMED_HOST}'" in str(caught.value)
    assert "MESSAGE_BROKER_HOST" in str(caught.value)


async def test_verification_off_trusts_any_certificate(
    tls_broker: TlsBroker, tls_certificates: Certificates
) -> None:
    files = tls_certificates
    unnamed = Broker(UNNAMED_HOST, tls_broker.port, tls_broker.username, tls_broker.password)
    address = broker_address(
        unnamed,
        ca_file=files.other_ca_file,
        verify=False,
        cert_file=files.client_cert_file,
        key_file=files.client_key_file,
    )
    connection = await rabbitmq.connect(address)
    await connection.close()


async def test_the_client_certificate_is_shown(
    tls_broker: TlsBroker, tls_certificates: Certificates
) -> None:
    """The broker requires one (every other test here shows it): without it, the broker
    sends an alert or drops the connection (TLS 1.3 ends the handshake before the broker
    checks, so which comes first is timing), and the line says which setting it is."""
    with pytest.raises((ConfigError, BrokerUnavailable)) as caught:
        await rabbitmq.connect(broker_address(tls_broker, ca_file=tls_certificates.ca_file))
    assert "\n" not in str(caught.value)
    assert f"{tls_broker.host}:{tls_broker.port}" in str(caught.value)
    assert "MESSAGE_BROKER_TLS_CERT_FILE" in str(caught.value)


async def test_tls_to_a_plain_broker_port_is_a_config_error(
    broker: Broker, tls_certificates: Certificates
) -> None:
    with pytest.raises(ConfigError) as caught:
        await rabbitmq.connect(broker_address(broker, ca_file=tls_certificates.ca_file))
    assert "MESSAGE_BROKER_PORT" in str(caught.value)
    assert "MESSAGE_BROKER_TLS" in str(caught.value)


async def test_plain_amqp_to_the_tls_port_fails_at_once(tls_broker: TlsBroker) -> None:
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="cannot reach the broker") as caught:
        await rabbitmq.connect(broker_address(tls_broker))
    assert "set MESSAGE_BROKER_TLS=true" in str(caught.value)
    assert time.monotonic() - started < 10


# --- FTPS ----------------------------------------------------------------------------------


async def test_storage_over_ftps_uploads_downloads_and_lists(
    ftps_server: FtpServer, tls_certificates: Certificates, tmp_path: Path, names: Names
) -> None:
    """More than a MiB each way, so the (TLS) data connection carries several blocks."""
    payload = bytes(range(256)) * 9000
    local = tmp_path / "up.bin"
    local.write_bytes(payload)
    storage = ftp_storage(ftps_server, TlsOptions("REMOTE_STORAGE_TLS", tls_certificates.ca_file))
    remote = f"/{names.prefix}/deep/up.bin"
    try:
        await storage.make_parents(remote)
        await storage.upload(local, remote)
        await storage.download(remote, tmp_path / "down.bin")
        entries = await storage.list(f"/{names.prefix}", recursive=True)
    finally:
        await storage.close()

    assert ftps_server.get(remote) == payload
    assert (tmp_path / "down.bin").read_bytes() == payload
    assert [(e.path, e.size) for e in entries if not e.is_dir] == [(remote, len(payload))]


async def test_plain_ftp_to_the_ftps_server_is_refused_at_once(
    ftps_server: FtpServer, tmp_path: Path
) -> None:
    storage = ftp_storage(ftps_server, None)
    started = time.monotonic()
    try:
        with pytest.raises(StorageRefused, match=r"550 .*TLS required"):
            await storage.download("/anything.zip", tmp_path / "x.zip")
    finally:
        await storage.close()
    assert time.monotonic() - started < 5  # refused, not retried


async def test_a_node_without_tls_stops_at_start_naming_the_reason(
    line: Pipeline, names: Names, broker: Broker, ftps_server: FtpServer, tmp_path: Path
) -> None:
    """Against a server that requires TLS: one line naming the server's answer, no hang."""
    settings = node_settings(names, broker, ftps_server, tmp_path)
    with pytest.raises(ConfigError) as caught:
        await asyncio.wait_for(run_node(settings, asyncio.Event()), 20)

    assert "TLS required" in str(caught.value)
    assert "REMOTE_STORAGE_TLS" in str(caught.value)


async def test_ftps_to_a_plain_server_is_refused_clearly(
    ftp_server: FtpServer, tls_certificates: Certificates, tmp_path: Path
) -> None:
    storage = ftp_storage(ftp_server, TlsOptions("REMOTE_STORAGE_TLS", tls_certificates.ca_file))
    try:
        with pytest.raises(StorageRefused, match=r"refused explicit TLS .*REMOTE_STORAGE_TLS"):
            await storage.download("/anything.zip", tmp_path / "x.zip")
    finally:
        await storage.close()


async def test_ftps_with_a_wrong_ca_is_refused_without_retries(
    ftps_server: FtpServer, tls_certificates: Certificates, tmp_path: Path
) -> None:
    wrong = TlsOptions("REMOTE_STORAGE_TLS", tls_certificates.other_ca_file)
    storage = ftp_storage(ftps_server, wrong)
    started = time.monotonic()
    try:
        with pytest.raises(StorageRefused) as caught:
            await storage.download("/anything.zip", tmp_path / "x.zip")
    finally:
        await storage.close()
    assert "not trusted" in str(caught.value)
    assert "REMOTE_STORAGE_TLS_CA_FILE" in str(caught.value)
    assert time.monotonic() - started < 0.5  # the retries would wait 0.5 s first


async def test_ftps_without_verification_accepts_the_certificate(
    ftps_server: FtpServer, tls_certificates: Certificates, tmp_path: Path
) -> None:
    unchecked = TlsOptions("REMOTE_STORAGE_TLS", tls_certificates.other_ca_file, verify=False)
    storage = ftp_storage(ftps_server, unchecked)
    try:
        await storage.list("/")
    finally:
        await storage.close()
