"""A 3-node RabbitMQ cluster on loopback, started by the tests from the installed broker.

Each member has its own node name, AMQP and distribution ports, data, logs and config; all
share one Erlang cookie (the HOME they are started with), and members 2 and 3 join member 1
with `rabbitmqctl join_cluster`. The Debian package's own scripts run as us (the wrapper in
/usr/sbin would become the `rabbitmq` user, whose cookie and data belong to the shared
broker), so the machine's broker is never touched. A test may SIGKILL a member, start it
again, or restart every member in turn; `close` stops whatever still runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.faults import pid_alive, port_answers, rabbit_tool, terminate, wait_gone
from tests.support.ports import steady_port
from tests.support.services import Broker

START_SECONDS = 120.0


class ClusterError(AssertionError):
    """A member did not start, join or stop as told (with its log's tail)."""


@dataclass
class Member:
    """One broker node of the cluster."""

    home: Path
    """The cluster's folder: its `.erlang.cookie` is every member's."""
    name: str
    port: int = field(default_factory=steady_port)
    dist_port: int = field(default_factory=steady_port)

    @property
    def node(self) -> str:
        return f"{self.name}@localhost"

    @property
    def folder(self) -> Path:
        return self.home / self.name

    @property
    def broker(self) -> Broker:
        return Broker("127.0.0.1", self.port, "guest", "guest")

    @property
    def address(self) -> str:
        """As MESSAGE_BROKER_HOST lists it."""
        return f"127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        folder = str(self.folder)
        return {
            **os.environ,
            "HOME": str(self.home),  # the cluster's one Erlang cookie
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": f"{folder}/mnesia",
            "RABBITMQ_LOG_BASE": f"{folder}/log",
            "RABBITMQ_CONFIG_FILE": f"{folder}/rabbitmq",  # .conf is added
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{folder}/enabled_plugins",
            "RABBITMQ_PID_FILE": f"{folder}/rabbitmq.pid",
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def ctl(self, *args: str, tool: str = "rabbitmqctl", timeout: float = 90) -> str:
        """A CLI tool against this member; its output (ClusterError if it fails)."""
        done = subprocess.run(
            [rabbit_tool(tool), "-q", "-n", self.node, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if done.returncode != 0:
            raise ClusterError(
                f"{tool} {' '.join(args)} on {self.node} failed: {done.stderr[-800:]}\n"
                f"{self.log_tail()}"
            )
        return done.stdout

    def launch(self) -> None:
        """Start the member's VM in the background (`await_startup` waits for it)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n"
            "log.console = false\n"
        )
        (self.folder / "enabled_plugins").write_text("[].\n")
        subprocess.run(
            [rabbit_tool("rabbitmq-server"), "-detached"],
            env=self.env,
            capture_output=True,
            timeout=60,
            check=True,
        )

    def await_startup(self, seconds: float = START_SECONDS) -> None:
        """The detached VM registers with epmd a moment after it is launched; until then
        `await_startup` fails at once, so it is asked again."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self.ctl("await_startup", "--timeout", "30")
                return
            except ClusterError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def join(self, seed: Member) -> None:
        self.ctl("stop_app")
        self.ctl("join_cluster", seed.node)
        self.ctl("start_app")

    @property
    def pid(self) -> int | None:
        pid_file = self.folder / "rabbitmq.pid"
        try:
            return int(pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def kill(self) -> None:
        """SIGKILL the member's Erlang VM: no goodbye to clients or peers."""
        pid = self.pid
        if pid is None:
            raise ClusterError(f"{self.node} has no pid file")
        os.kill(pid, signal.SIGKILL)
        wait_gone(pid, 10)

    def stop(self) -> None:
        """Stop the member gracefully: RabbitMQ takes SIGTERM as `rabbitmqctl stop` (without
        booting a CLI VM, which costs seconds on a busy machine); one that does not go is
        killed."""
        pid = self.pid
        if pid is not None and pid_alive(pid):
            terminate(pid, 60)

    def restart(self) -> None:
        """Start a stopped or killed member again; it rejoins with the data it kept. Up once
        its AMQP port answers (the listener opens last in a RabbitMQ boot)."""
        self.launch()
        deadline = time.monotonic() + START_SECONDS
        while not port_answers(self.port):
            if time.monotonic() > deadline:
                raise ClusterError(f"{self.node} did not come back: {self.log_tail()}")
            time.sleep(0.2)

    def log_tail(self) -> str:
        logs = sorted((self.folder / "log").glob("*.log"))
        return "".join(log.read_text(errors="replace")[-1500:] for log in logs)


@dataclass
class RabbitCluster:
    home: Path
    size: int = 3
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    members: list[Member] = field(default_factory=list)

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        cookie = self.home / ".erlang.cookie"
        cookie.write_text(uuid.uuid4().hex.upper())
        cookie.chmod(0o400)
        self.members = [Member(self.home, f"ulos-c{self.tag}-{n}") for n in range(1, self.size + 1)]
        for member in self.members:  # the VMs boot side by side
            member.launch()
        for member in self.members:
            member.await_startup()
        seed, *others = self.members
        for member in others:
            member.join(seed)
        running = self.running_nodes()
        if sorted(running) != sorted(m.node for m in self.members):
            raise ClusterError(f"the cluster runs {running}, not all {self.size} members")

    def running_nodes(self, via: Member | None = None) -> list[str]:
        """The members `via` (the first by default) sees running."""
        asker = via or self.members[0]
        status = asker.ctl("eval", "rabbit_nodes:all_running().")
        return [name.strip(" '[]\n") for name in status.split(",") if name.strip(" '[]\n")]

    @property
    def hosts(self) -> str:
        """MESSAGE_BROKER_HOST for the whole cluster."""
        return ",".join(member.address for member in self.members)

    def await_quorum_safe(self, member: Member, seconds: float = 120) -> None:
        """Until every quorum queue has all its members online again (the restart before
        has caught up), so stopping `member` leaves each a majority: what an operator checks
        before each step of a rolling restart. Asked of another member than `member`."""
        asker = next(m for m in self.members if m is not member)
        deadline = time.monotonic() + seconds
        while True:
            listed = json.loads(
                asker.ctl("list_queues", "name", "members", "online", "--formatter", "json")
            )
            behind = [
                queue["name"]
                for queue in listed
                if isinstance(queue.get("members"), list)
                and len(queue.get("online") or []) < len(queue["members"])
            ]
            if not behind:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"quorum queues still missing members: {behind}")
            time.sleep(1)

    def close(self) -> None:
        for member in self.members:
            if member.pid is not None and pid_alive(member.pid):
                member.stop()
