"""Servers that speak TLS, and servers whose passwords are worth looking for.

- `tls_certificates`: a test CA (trustme) with a server certificate for 127.0.0.1 and
  localhost, a client certificate, and a second CA that signed nothing here ("the wrong CA").
- `tls_broker`: a SECOND RabbitMQ node, started from the installed rabbitmq-server with its
  own name, ports, data and cookie, listening only for AMQPS and requiring a client
  certificate. The shared broker on 5672 is never touched. Its user's password is
  distinctive, so tests can assert it appears nowhere.
- `ftps_server`: pyftpdlib's TLS_FTPHandler requiring TLS on the control and the data
  connections (explicit FTPS), with a distinctive password.
- `secret_ftp_server`: a plain FTP server with a distinctive password.

tests/conftest.py imports these fixtures. A service that cannot start fails the run.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from pyftpdlib.authorizers import DummyAuthorizer
from pyftpdlib.handlers import TLS_FTPHandler
from pyftpdlib.ioloop import IOLoop
from pyftpdlib.servers import ThreadedFTPServer

from tests.support.ports import steady_port
from tests.support.services import Broker, FtpServer, _TestHandler, serve_in_thread

RABBITMQ_SCRIPTS = Path(os.environ.get("ULOS_TEST_RABBITMQ_SCRIPTS", "/usr/lib/rabbitmq/bin"))
"""Debian's RabbitMQ scripts. /usr/sbin/rabbitmq-server would switch to the rabbitmq user,
who cannot read pytest's private temporary directories."""
BROKER_START_TIMEOUT = 90
UNNAMED_HOST = "127.0.0.2"
"""A loopback address the server certificate does not name: the host name check's test."""


def secret() -> str:
    """A password no other string in a test run can contain by chance."""
    return f"s3cr3t-{uuid.uuid4().hex}"


@dataclass(frozen=True)
class Certificates:
    ca_file: Path
    """The test CA: trust this one."""
    server_cert_file: Path
    server_key_file: Path
    server_pem: Path
    """Key and certificate chain in one file, as pyftpdlib takes them."""
    client_cert_file: Path
    client_key_file: Path
    other_ca_file: Path
    """A CA that signed nothing here."""


@pytest.fixture(scope="session")
def tls_certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    folder = tmp_path_factory.mktemp("tls")
    ca = trustme.CA(organization_name="ulos-py test CA")
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("ulos-py.node.test", common_name="ulos-py test node")
    files = Certificates(
        ca_file=folder / "ca.pem",
        server_cert_file=folder / "server-cert.pem",
        server_key_file=folder / "server-key.pem",
        server_pem=folder / "server.pem",
        client_cert_file=folder / "client-cert.pem",
        client_key_file=folder / "client-key.pem",
        other_ca_file=folder / "other-ca.pem",
    )
    ca.cert_pem.write_to_path(str(files.ca_file))
    for blob in server.cert_chain_pems:
        blob.write_to_path(str(files.server_cert_file), append=True)
    server.private_key_pem.write_to_path(str(files.server_key_file))
    server.private_key_and_cert_chain_pem.write_to_path(str(files.server_pem))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert_file))
    client.private_key_pem.write_to_path(str(files.client_key_file))
    trustme.CA(organization_name="someone else").cert_pem.write_to_path(str(files.other_ca_file))
    return files


# --- the second broker ---------------------------------------------------------------------


@dataclass(frozen=True)
class TlsBroker(Broker):
    """A broker reached by AMQPS only, with a client certificate."""

    node: str
    certificates: Certificates

    @property
    def url(self) -> str:
        """aiormq's AMQPS URL: trust the test CA, show the client certificate."""
        files = self.certificates
        return (
            f"amqps://{self.username}:{self.password}@{self.host}:{self.port}/"
            f"?cafile={files.ca_file}&certfile={files.client_cert_file}"
            f"&keyfile={files.client_key_file}"
        )

    def values(self) -> dict[str, Any]:
        """A node's broker settings, by their environment variable names."""
        return {
            "MESSAGE_BROKER_HOST": self.host,
            "MESSAGE_BROKER_PORT": self.port,
            "MESSAGE_BROKER_USERNAME": self.username,
            "MESSAGE_BROKER_PASSWORD": self.password,
            "MESSAGE_BROKER_TLS": "true",
            "MESSAGE_BROKER_TLS_CA_FILE": self.certificates.ca_file,
            "MESSAGE_BROKER_TLS_CERT_FILE": self.certificates.client_cert_file,
            "MESSAGE_BROKER_TLS_KEY_FILE": self.certificates.client_key_file,
        }


def _broker_config(port: int, files: Certificates, username: str, password: str) -> str:
    return f"""
listeners.tcp = none
listeners.ssl.default = 127.0.0.1:{port}
listeners.ssl.unnamed = {UNNAMED_HOST}:{port}
ssl_options.cacertfile = {files.ca_file}
ssl_options.certfile = {files.server_cert_file}
ssl_options.keyfile = {files.server_key_file}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = true
default_user = {username}
default_pass = {password}
log.console = false
"""


def _broker_env(home: Path, node: str, dist_port: int) -> dict[str, str]:
    """Everything the node and its rabbitmqctl need, none of it shared with the main broker:
    name, distribution port, data, logs, plugins and (through HOME) the Erlang cookie."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    return {
        **keep,
        "HOME": str(home),
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_DIST_PORT": str(dist_port),
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(home / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
        # Erlang distribution on loopback only, like the AMQPS listener.
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def _wait_for_listener(process: subprocess.Popen[bytes], port: int, console: Path) -> None:
    deadline = time.monotonic() + BROKER_START_TIMEOUT
    while time.monotonic() < deadline and process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    pytest.fail(f"the AMQPS test broker did not listen on {port}:\n{_tail(console)}", pytrace=False)


@pytest.fixture(scope="session")
def tls_broker(
    tls_certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsBroker]:
    server, ctl = RABBITMQ_SCRIPTS / "rabbitmq-server", RABBITMQ_SCRIPTS / "rabbitmqctl"
    if not (server.is_file() and ctl.is_file()):
        pytest.fail(
            f"no RabbitMQ scripts in {RABBITMQ_SCRIPTS} to start the AMQPS test broker with. "
            "Run the tests with scripts/test, which installs rabbitmq-server.",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("tls-broker")
    node = f"ulos-tls-{uuid.uuid4().hex[:8]}@localhost"
    port, username, password = steady_port(), "ulos-tls", secret()
    (home / "rabbitmq.conf").write_text(_broker_config(port, tls_certificates, username, password))
    (home / "enabled_plugins").write_text("[].\n")
    env = _broker_env(home, node, steady_port())
    console = home / "console.log"
    with console.open("w") as out:
        process = subprocess.Popen(
            [str(server)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        # rabbitmqctl await_startup gives up at once on a node not yet known to epmd: wait
        # for the listener (opened last), then let it confirm the boot.
        _wait_for_listener(process, port, console)
        ready = subprocess.run(
            [str(ctl), "-n", node, "await_startup", "--timeout", str(BROKER_START_TIMEOUT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=BROKER_START_TIMEOUT + 10,
            check=False,
        )
        if ready.returncode != 0:
            pytest.fail(
                f"the AMQPS test broker {node} did not start:\n{ready.stderr.strip()}\n"
                f"{_tail(console)}",
                pytrace=False,
            )
        yield TlsBroker("127.0.0.1", port, username, password, node, tls_certificates)
    finally:
        try:
            stop = [str(ctl), "-n", node, "stop"]
            subprocess.run(stop, env=env, capture_output=True, timeout=60, check=False)
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


# --- FTP servers ---------------------------------------------------------------------------


class _TlsHandler(_TestHandler, TLS_FTPHandler):  # type: ignore[misc]
    """Explicit FTPS only: a client that skips AUTH TLS or PROT P is refused."""

    tls_control_required = True
    tls_data_required = True


def _serve_ftp(
    root: Path, base: type[_TestHandler], password: str, **attributes: Any
) -> Iterator[FtpServer]:
    authorizer = DummyAuthorizer()
    authorizer.add_user("lab", password, str(root), perm="elradfmwMT")
    # No pause before answering a failed login (3 s by default): tests fail logins on purpose.
    handler = type(
        "Handler", (base,), {"authorizer": authorizer, "auth_failed_timeout": 0, **attributes}
    )
    # An I/O loop of its own: pyftpdlib's shared one cannot serve two servers' threads.
    server = ThreadedFTPServer(("127.0.0.1", 0), handler, ioloop=IOLoop())
    stop = serve_in_thread(server)
    host, port = server.address[:2]
    try:
        yield FtpServer(host, port, "lab", password, root, handler)
    finally:
        stop()


@pytest.fixture(scope="session")
def ftps_server(
    tls_certificates: Certificates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FtpServer]:
    yield from _serve_ftp(
        tmp_path_factory.mktemp("ftps-root"),
        _TlsHandler,
        secret(),
        certfile=str(tls_certificates.server_pem),
    )


@pytest.fixture(scope="session")
def secret_ftp_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FtpServer]:
    yield from _serve_ftp(tmp_path_factory.mktemp("secret-ftp-root"), _TestHandler, secret())
