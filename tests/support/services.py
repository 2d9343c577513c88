"""The real services the integration and end-to-end tests use, and unique names per test:
the broker's address, the FTP server (pyftpdlib) and the Docker engine. The fixtures that
start them are in tests/conftest.py."""

from __future__ import annotations

import ipaddress
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import aio_pika
import docker
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import FTPHandler
from pyftpdlib.servers import ThreadedFTPServer

BROKER_HOST = os.environ.get("ULOS_TEST_BROKER_HOST", "127.0.0.1")


BROKER_PORT = int(os.environ.get("ULOS_TEST_BROKER_PORT", "5672"))


BROKER_USER = os.environ.get("ULOS_TEST_BROKER_USERNAME", "guest")


BROKER_PASSWORD = os.environ.get("ULOS_TEST_BROKER_PASSWORD", "guest")


ROOT = Path(__file__).resolve().parents[2]


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
    commands: ClassVar[Counter[str]] = Counter()
    """Every command received, by verb: the round trips a node costs the server."""
    refuse_epsv: ClassVar[bool] = False
    """Answer EPSV as a server without it does (500), so clients must use PASV."""
    transient_failures: ClassVar[dict[str, int]] = {}  # file name -> RETRs still to refuse with 450
    transient_store_failures: ClassVar[dict[str, int]] = {}
    """File name -> uploads still to refuse with 450 (STOR to the file, or to the temporary
    name `.<name>.<random>.part` an atomic upload of it uses)."""

    def log(self, msg: str, logfun: object = None) -> None:
        pass

    def logline(self, msg: str, logfun: object = None) -> None:
        pass

    def pre_process_command(self, line: str, cmd: str, arg: str) -> None:
        type(self).commands[cmd] += 1
        if cmd == "EPSV" and self.refuse_epsv:
            self.respond("500 Command not understood.")
            return
        super().pre_process_command(line, cmd, arg)

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

    def ftp_STOR(self, file: str, mode: str = "w") -> object:
        name = Path(file).name
        for target, left in self.transient_store_failures.items():
            if left > 0 and (name == target or name.startswith(f".{target}.")):
                self.transient_store_failures[target] -= 1
                self.respond("450 Busy, try again.")
                return None
        return super().ftp_STOR(file, mode)


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


def serve_in_thread(server: ThreadedFTPServer) -> Callable[[], None]:
    """Run a pyftpdlib server's loop in a thread of its own; the returned call stops it.

    The loop's own thread closes the server once the loop has ended: closing it from another
    thread while the loop polls makes the poll fail with EBADF (seen in CI at teardown)."""
    stopping = threading.Event()

    def serve() -> None:
        try:
            while not stopping.is_set():
                server.serve_forever(timeout=0.2, blocking=False, handle_exit=False)
        finally:
            server.close_all()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(timeout=10)

    return stop


def start_ftp_server(root: Path, port: int = 0) -> tuple[ThreadedFTPServer, Callable[[], None]]:
    """A plain FTP server for the tests on loopback, and the call that stops it."""
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, str(root), perm="elradfmwMT")
    handler = type("Handler", (_TestHandler,), {"authorizer": authorizer})
    handler.passive_ports = None
    server = ThreadedFTPServer(("127.0.0.1", port), handler)
    return server, serve_in_thread(server)


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


CANCEL_EXCHANGE = CANCEL_STREAM = "ulos-cancellations"
"""The nodes' default cancellation exchange and stream (SPEC §8): every node needs them, as
`topology apply` declares them in a deployment. Tests share them (task ids never repeat)."""


async def declare_cancellations(broker: Broker) -> None:
    connection = await aio_pika.connect(broker.url)
    async with connection:
        await declare_cancellations_on(await connection.channel())


async def declare_cancellations_on(channel: aio_pika.abc.AbstractChannel) -> None:
    """On any broker a test node talks to (the private and TLS ones too)."""
    exchange = await channel.declare_exchange(CANCEL_EXCHANGE, "fanout", durable=True)
    stream = await channel.declare_queue(
        CANCEL_STREAM,
        durable=True,
        arguments={"x-queue-type": "stream", "x-max-age": "86400s"},
    )
    await stream.bind(exchange, "")
