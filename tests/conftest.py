"""Real services for the integration and end-to-end tests.

RabbitMQ and the Docker engine are started by the test command (scripts/test) before pytest
runs, which also builds the shipped executor images; an FTP server (pyftpdlib, a server
this project does not implement) is started here on loopback. A service that does not
answer FAILS the run with a clear message: a skipped integration test proves nothing.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import aio_pika
import docker
import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import ThreadedFTPServer

from tests.postgres import Postgres, start_postgres

BROKER_HOST = os.environ.get("ULOS_TEST_BROKER_HOST", "127.0.0.1")
BROKER_PORT = int(os.environ.get("ULOS_TEST_BROKER_PORT", "5672"))
BROKER_USER = os.environ.get("ULOS_TEST_BROKER_USERNAME", "guest")
BROKER_PASSWORD = os.environ.get("ULOS_TEST_BROKER_PASSWORD", "guest")
ROOT = Path(__file__).resolve().parents[1]
REGISTRY = ROOT / "executors" / "registry.toml"
PROBE_EXECUTOR = ROOT / "tests" / "integration" / "docker_probe"
FTP_USER = "lab"
FTP_PASSWORD = "lab-secret"


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


class _TestHandler(FTPHandler):  # type: ignore[misc]
    """pyftpdlib's handler: quiet, counting logins and TYPE commands, able to refuse a file
    for a while."""

    logins: ClassVar[int] = 0
    type_commands: ClassVar[int] = 0
    transient_failures: ClassVar[dict[str, int]] = {}  # file name -> RETRs still to refuse with 450

    def log(self, msg: str, logfun: object = None) -> None:
        pass

    def logline(self, msg: str, logfun: object = None) -> None:
        pass

    def on_login(self, username: str) -> None:
        type(self).logins += 1

    def ftp_TYPE(self, line: str) -> object:
        type(self).type_commands += 1
        return super().ftp_TYPE(line)

    def ftp_RETR(self, file: str) -> object:
        name = Path(file).name
        if self.transient_failures.get(name, 0) > 0:
            self.transient_failures[name] -= 1
            self.respond("450 Busy, try again.")
            return None
        return super().ftp_RETR(file)


@dataclass(frozen=True)
class FtpServer:
    host: str
    port: int
    username: str
    password: str
    root: Path
    handler: type[_TestHandler]

    def put(self, remote_path: str, data: bytes) -> None:
        """Place a file on the server's disk (test set-up, not the system under test)."""
        target = self.root / remote_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)

    def get(self, remote_path: str) -> bytes:
        return (self.root / remote_path.lstrip("/")).read_bytes()


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    username: str
    password: str

    @property
    def url(self) -> str:
        return f"amqp://{self.username}:{self.password}@{self.host}:{self.port}/"


@pytest.fixture(scope="session")
def broker() -> Broker:
    if not _answers(BROKER_HOST, BROKER_PORT):
        pytest.fail(
            f"RabbitMQ does not answer on {BROKER_HOST}:{BROKER_PORT}. Run the tests with "
            "scripts/test, which installs and starts it.",
            pytrace=False,
        )
    return Broker(BROKER_HOST, BROKER_PORT, BROKER_USER, BROKER_PASSWORD)


def start_ftp_server(root: Path, port: int = 0) -> tuple[ThreadedFTPServer, threading.Thread]:
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, str(root), perm="elradfmwMT")
    handler = type("Handler", (_TestHandler,), {"authorizer": authorizer})
    handler.passive_ports = None
    server = ThreadedFTPServer(("127.0.0.1", port), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True)
    thread.start()
    return server, thread


@pytest.fixture(scope="session")
def ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    root = tmp_path_factory.mktemp("ftp-root")
    server, thread = start_ftp_server(root)
    host, port = server.address[:2]
    try:
        yield FtpServer(host, port, FTP_USER, FTP_PASSWORD, root, server.handler)
    finally:
        server.close_all()
        thread.join(timeout=5)


@dataclass(frozen=True)
class Names:
    """Unique exchange and queue names for one test."""

    prefix: str

    @property
    def exchange(self) -> str:
        return f"{self.prefix}.processing"

    @property
    def logs_exchange(self) -> str:
        return f"{self.prefix}.logs"

    @property
    def crash_exchange(self) -> str:
        return f"{self.prefix}.crashes"

    def queue(self, name: str) -> str:
        return f"{self.prefix}.{name}"


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


@dataclass(frozen=True)
class Engine:
    """The Docker engine the tests use, to look behind the node's back."""

    client: docker.DockerClient

    def containers_of(self, node_id: str) -> list[str]:
        """Containers (running or not) a node created and has not removed."""
        # One API call: the high-level list inspects each container after listing, and
        # fails when one is removed in between (which is what the node is doing).
        found = self.client.api.containers(all=True, filters={"label": f"ulos-py.node={node_id}"})
        return [c["Names"][0].lstrip("/") for c in found]

    @property
    def bridge_gateway(self) -> str:
        """The host as containers on the default bridge network see it."""
        [config] = self.client.networks.get("bridge").attrs["IPAM"]["Config"]
        # Docker leaves Gateway out when it picked the default: the subnet's first address.
        return str(config.get("Gateway") or ipaddress.ip_network(config["Subnet"])[1])


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
    from ulos_py.execution.registry import read_registry

    specs = [*read_registry(REGISTRY).docker_specs, load_docker_spec("probe", PROBE_EXECUTOR)]
    images = DockerImages()
    try:
        base = choose_base(images, None, print)
        return build_images(images, specs, base, lambda line: None)
    finally:
        images.close()


# TLS servers and servers with distinctive passwords (tests/tls_servers.py), as fixtures here.
from tests.tls_servers import (  # noqa: E402, F401
    ftps_server,
    secret_ftp_server,
    tls_broker,
    tls_certificates,
)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A private PostgreSQL cluster for the session (see tests/postgres.py)."""
    yield from start_postgres()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty tracker database: a SQLite file, or a database of the private cluster."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tracker.sqlite3'}"
    server: Postgres = request.getfixturevalue("postgres")
    return server.create_database()
