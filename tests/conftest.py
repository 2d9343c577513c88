"""Real services for the integration and end-to-end tests, as fixtures (what they are
and how they are reached: tests/support/services.py).

RabbitMQ and the Docker engine are started by the test command (scripts/test) before pytest
runs, which also builds the shipped executor images; an FTP server (pyftpdlib, a server
this project does not implement) is started here on loopback. A service that does not
answer FAILS the run with a clear message: a skipped integration test proves nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aio_pika
import docker
import pytest

from tests.support.postgres import Postgres, start_postgres
from tests.support.services import (
    BROKER_HOST,
    BROKER_PASSWORD,
    BROKER_PORT,
    BROKER_USER,
    FTP_PASSWORD,
    FTP_USER,
    PROBE_EXECUTOR,
    REGISTRY,
    Broker,
    Engine,
    FtpServer,
    Names,
    _answers,
    declare_cancellations,
    start_ftp_server,
)


@pytest.fixture(scope="session")
def broker() -> Broker:
    if not _answers(BROKER_HOST, BROKER_PORT):
        pytest.fail(
            f"RabbitMQ does not answer on {BROKER_HOST}:{BROKER_PORT}. Run the tests with "
            "scripts/test, which installs and starts it.",
            pytrace=False,
        )
    found = Broker(BROKER_HOST, BROKER_PORT, BROKER_USER, BROKER_PASSWORD)
    asyncio.run(declare_cancellations(found))
    return found


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    root = tmp_path_factory.mktemp("ftp-root")
    server, stop = start_ftp_server(root)
    host, port = server.address[:2]
    try:
        yield FtpServer(host, port, FTP_USER, FTP_PASSWORD, root, server.handler)
    finally:
        stop()


@pytest.fixture
def names() -> Names:
    return Names(f"t-{uuid.uuid4().hex[:10]}")


@pytest.fixture
async def amqp(broker: Broker) -> AsyncIterator[aio_pika.abc.AbstractRobustConnection]:
    connection = await aio_pika.connect_robust(broker.url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture(scope="session")
def docker_engine() -> Iterator[Engine]:
    client = docker.from_env()
    try:
        client.ping()
    except (docker.errors.DockerException, OSError) as exc:
        client.close()
        pytest.fail(
            f"The Docker engine does not answer ({exc}). Run the tests with scripts/test, "
            "which installs and starts it.",
            pytrace=False,
        )
    try:
        yield Engine(client)
    finally:
        client.close()


@pytest.fixture(scope="session")
def executor_images(docker_engine: Engine) -> list[str]:
    """The shipped executors' images and the test probe's, built by the product's own code.

    scripts/test builds the shipped ones (and the base) first, so here the cache answers.
    """
    from ulos_py.adapters.docker_images import DockerImages
    from ulos_py.execution.docker_spec import load_docker_spec
    from ulos_py.execution.images import build_images, choose_base
    from ulos_py.execution.pip_access import host_pip_build_args
    from ulos_py.execution.registry import read_registry

    plan = read_registry(REGISTRY)
    specs = [*plan.with_bases(plan.docker_specs), load_docker_spec("probe", PROBE_EXECUTOR)]
    images = DockerImages()
    try:
        base = choose_base(images, None, print)
        return build_images(images, specs, base, lambda line: None, host_pip_build_args())
    finally:
        images.close()


# TLS servers and servers with distinctive passwords (tests/support/tls_servers.py), as
# fixtures here.
from tests.support.tls_servers import (  # noqa: E402, F401
    ftps_server,
    secret_ftp_server,
    tls_broker,
    tls_certificates,
)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A private PostgreSQL cluster for the session (see tests/support/postgres.py)."""
    yield from start_postgres()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty tracker database: a SQLite file, or a database of the private cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tracker.sqlite3'}"
    server: Postgres = request.getfixturevalue("postgres")
    return server.create_database()
