"""A private RabbitMQ node whose consumer (delivery acknowledgement) timeout is 5 s.

Started from the installed rabbitmq-server with its own name, ports, data, logs, plugins and
(through HOME) Erlang cookie; the shared broker on 5672 is never touched or reconfigured.

RabbitMQ up to 4.2 checks the timeout on each channel's periodic tick, every
`channel_tick_interval` ms (60 000 by default, an internal setting): with the defaults a
5 s timeout closes the channel about a minute after the delivery (measured on 3.10: 60.0 s).
This node ticks every second (advanced.config), so the channel closes 5 to 6 s after the
delivery. From 4.3 the queue enforces the timeout (quorum queues only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.support.ports import steady_port
from tests.support.services import Broker

RABBITMQ_SCRIPTS = Path(os.environ.get("ULOS_TEST_RABBITMQ_SCRIPTS", "/usr/lib/rabbitmq/bin"))
"""Debian's scripts: /usr/sbin/rabbitmq-server would switch to the rabbitmq user, who cannot
read pytest's private temporary directories."""
CONSUMER_TIMEOUT_MS = 5000
TICK_MS = 1000
START_TIMEOUT = 90
TIMED_OUT = "delivery acknowledgement on channel"
"""What the broker logs (and says to the client) when it closes a channel for the timeout."""


@dataclass(frozen=True)
class PrivateBroker(Broker):
    node: str = ""
    env: dict[str, str] = field(default_factory=dict, repr=False)
    log_file: Path = Path()

    def ctl(self, *args: str) -> str:
        """rabbitmqctl against this node only; its output."""
        done = subprocess.run(
            [str(RABBITMQ_SCRIPTS / "rabbitmqctl"), "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        return done.stdout

    def channel_timeouts(self) -> int:
        """How often the node has closed a channel for the consumer timeout so far."""
        try:
            return self.log_file.read_text(errors="replace").count(TIMED_OUT)
        except FileNotFoundError:
            return 0

    def queues(self, prefix: str) -> list[str]:
        """Names of the queues that start with `prefix`."""
        lines = self.ctl("list_queues", "name", "--no-table-headers", "--quiet").splitlines()
        return [name.strip() for name in lines if name.strip().startswith(prefix)]


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(nothing)"


@pytest.fixture(scope="module")
def short_timeout_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    server, ctl = RABBITMQ_SCRIPTS / "rabbitmq-server", RABBITMQ_SCRIPTS / "rabbitmqctl"
    if not (server.is_file() and ctl.is_file()):
        pytest.fail(
            f"no RabbitMQ scripts in {RABBITMQ_SCRIPTS} to start a private broker with. "
            "Run the tests with scripts/test, which installs rabbitmq-server.",
            pytrace=False,
        )
    home = tmp_path_factory.mktemp("short-timeout-broker")
    node = f"ulos-ct-{uuid.uuid4().hex[:8]}@localhost"
    port = steady_port()
    (home / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{port}\n"
        "loopback_users = none\n"
        f"consumer_timeout = {CONSUMER_TIMEOUT_MS}\n"
        "log.console = false\n"
        "log.file.level = info\n"
    )
    (home / "advanced.config").write_text(
        f"[{{rabbit, [{{channel_tick_interval, {TICK_MS}}}]}}].\n"
    )
    (home / "enabled_plugins").write_text("[].\n")
    (home / "rabbitmq-env.conf").write_text("")
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
    env = {
        **keep,
        "HOME": str(home),  # its own Erlang cookie
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_DIST_PORT": str(steady_port()),
        "RABBITMQ_CONF_ENV_FILE": str(home / "rabbitmq-env.conf"),
        "RABBITMQ_CONFIG_FILE": str(home / "rabbitmq.conf"),
        "RABBITMQ_ADVANCED_CONFIG_FILE": str(home / "advanced.config"),
        "RABBITMQ_MNESIA_BASE": str(home / "mnesia"),
        "RABBITMQ_LOG_BASE": str(home / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(home / "enabled_plugins"),
        "RABBITMQ_PID_FILE": str(home / "pid"),
        "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
    }
    console = home / "console.log"
    with console.open("w") as out:
        process = subprocess.Popen(
            [str(server)], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    broker = PrivateBroker(
        "127.0.0.1", port, "guest", "guest", node, env, home / "log" / f"{node}.log"
    )
    try:
        # `wait` follows the pid file, then the boot: no port is probed before it listens.
        ready = subprocess.run(
            [str(ctl), "-n", node, "wait", str(home / "pid"), "--timeout", str(START_TIMEOUT)],
            env=env,
            capture_output=True,
            text=True,
            timeout=START_TIMEOUT + 10,
            check=False,
        )
        if ready.returncode != 0:
            pytest.fail(
                f"the private broker {node} did not start:\n{ready.stderr.strip()}\n"
                f"{_tail(console)}",
                pytrace=False,
            )
        yield broker
    finally:
        subprocess.run(
            [str(ctl), "-n", node, "stop"], env=env, capture_output=True, timeout=60, check=False
        )
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
