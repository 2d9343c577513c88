"""The fault-injection cases' private services (a RabbitMQ node to stop, an FTP server
to take away) and what builds their pipelines; the fixtures are in tests/faults/conftest.py."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import ThreadedFTPServer

from tests.support.fault_pipeline import FaultLine
from tests.support.ports import steady_port
from tests.support.services import (
    FTP_PASSWORD,
    FTP_USER,
    ROOT,
    Broker,
    FtpServer,
    _TestHandler,
    serve_in_thread,
)

RABBIT_TOOLS = Path("/usr/lib/rabbitmq/bin")
"""The Debian package's own scripts: run as us, not through the wrapper that becomes the
`rabbitmq` user (whose cookie and data belong to the shared broker)."""


REPORT_FILE = ROOT / ".run" / "faults.txt"


def rabbit_tool(name: str) -> str:
    direct = RABBIT_TOOLS / name
    if direct.is_file():
        return str(direct)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: install rabbitmq-server (scripts/test does)", pytrace=False)
    return found


@dataclass
class PrivateBroker:
    """A RabbitMQ node of the test's own, which the test may stop and start at will."""

    home: Path
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    port: int = field(default_factory=steady_port)
    dist_port: int = field(default_factory=steady_port)

    @property
    def node(self) -> str:
        return f"ulos-fault-{self.tag}@localhost"

    @property
    def broker(self) -> Broker:
        return Broker("127.0.0.1", self.port, "guest", "guest")

    @property
    def env(self) -> dict[str, str]:
        home = str(self.home)
        return {
            **os.environ,
            "HOME": home,  # its own Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{home}/mnesia",
            "RABBITMQ_LOG_BASE": f"{home}/log",
            "RABBITMQ_CONFIG_FILE": f"{home}/rabbitmq",  # .conf is added
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{home}/enabled_plugins",
            "RABBITMQ_PID_FILE": f"{home}/rabbitmq.pid",
        }

    def ctl(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [rabbit_tool("rabbitmqctl"), "-q", "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        (self.home / "enabled_plugins").write_text("[].\n")
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        self.launch()

    def launch(self) -> None:
        """Boot the node's VM; up once its AMQP port answers (RabbitMQ opens its listener
        last), which is asked of the socket rather than of a `rabbitmqctl` VM that itself
        takes seconds to boot on a busy machine."""
        subprocess.run(
            [rabbit_tool("rabbitmq-server"), "-detached"],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )
        self.await_port()

    @property
    def answers(self) -> bool:
        return port_answers(self.port)

    def await_port(self, seconds: float = 90) -> None:
        deadline = time.monotonic() + seconds
        while not self.answers:
            if time.monotonic() > deadline:
                pytest.fail(
                    f"private RabbitMQ {self.node} did not start:\n{self.log_tail()}",
                    pytrace=False,
                )
            time.sleep(0.2)

    @property
    def pid(self) -> int | None:
        pid_file = self.home / "rabbitmq.pid"
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def restart(self, down_seconds: float) -> None:
        """Stop the whole node at once (SIGTERM: RabbitMQ's orderly stop, which closes every
        client connection first), stay down `down_seconds`, and boot it again."""
        pid = self.pid
        assert pid is not None, f"{self.node} wrote no pid file"
        terminate(pid, 60)
        time.sleep(down_seconds)
        self.launch()

    def log_tail(self) -> str:
        logs = sorted((self.home / "log").glob("*.log"))
        return "".join(log.read_text(errors="replace")[-2000:] for log in logs)

    def stop_app(self) -> None:
        result = self.ctl("stop_app")
        assert result.returncode == 0, result.stderr

    def start_app(self) -> None:
        result = self.ctl("start_app")
        assert result.returncode == 0, result.stderr
        self.await_port()

    def ensure_running(self) -> None:
        """Running again after a test that stopped its app or its whole VM."""
        if self.answers:
            return
        pid = self.pid
        if pid is not None and pid_alive(pid):
            self.start_app()
        else:
            self.launch()

    def close_connections(self, name_part: str) -> int:
        """Close the client connections whose given name contains `name_part` (the nodes'
        are named `ulos-py node <node id>`), as a network drop would; how many."""
        listed = self.ctl("list_connections", "--no-table-headers", "pid", "client_properties")
        assert listed.returncode == 0, listed.stderr
        closed = 0
        for row in listed.stdout.splitlines():
            pid, _, properties = row.partition("\t")
            if '"connection_name"' in properties and name_part in properties:
                result = self.ctl("close_connection", pid, "fault injection: connection dropped")
                assert result.returncode == 0, result.stderr
                closed += 1
        return closed

    def shutdown(self) -> None:
        """Stop the node and its Erlang VM (by the pid it wrote), whatever state it is in."""
        pid = self.pid
        if pid is not None and pid_alive(pid):
            terminate(pid, 30)


def port_answers(port: int) -> bool:
    """A broker is up once its AMQP port answers: RabbitMQ opens its listener last."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def terminate(pid: int, seconds: float) -> None:
    """SIGTERM (RabbitMQ's orderly stop, as `rabbitmqctl stop` without booting a CLI VM);
    SIGKILL if the process is still there after `seconds`."""
    os.kill(pid, signal.SIGTERM)
    if not wait_gone(pid, seconds):
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 10)


class _OwnLoopFtpServer(ThreadedFTPServer):  # type: ignore[misc]
    """pyftpdlib's threaded server keeps its exit flag on the class and serves on the
    process-wide I/O loop, so closing one closes every server in the process (the session's
    shared one too). This one has its own of both, and can be closed alone."""

    def __init__(self, address: tuple[str, int], handler: type[_TestHandler]) -> None:
        self._exit = threading.Event()
        self._lock = threading.Lock()
        super().__init__(address, handler, ioloop=IOLoop())


@dataclass
class RestartableFtp:
    """A pyftpdlib server of the test's own that can go away and come back on its port."""

    root: Path
    port: int = field(default_factory=steady_port)
    _server: ThreadedFTPServer | None = None
    _stop: Callable[[], None] | None = None

    def start(self) -> None:
        authorizer = DummyAuthorizer()
        authorizer.add_user(FTP_USER, FTP_PASSWORD, str(self.root), perm="elradfmwMT")
        handler = type("Handler", (_TestHandler,), {"authorizer": authorizer})
        self._server = _OwnLoopFtpServer(("127.0.0.1", self.port), handler)
        self._stop = serve_in_thread(self._server)

    def stop(self) -> None:
        """Close the listener and every open connection: the server is gone."""
        if self._stop is not None:
            self._stop()
        self._server = self._stop = None

    @property
    def server(self) -> FtpServer:
        return FtpServer("127.0.0.1", self.port, FTP_USER, FTP_PASSWORD, self.root, _TestHandler)


MakeLine = Callable[..., Awaitable[FaultLine]]
