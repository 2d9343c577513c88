"""What the benchmark reads from /proc (Linux): memory and CPU of the processes it watches."""

from __future__ import annotations

import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_status_kib(pid: int, key: str) -> int | None:
    """A `VmRSS`/`VmHWM` line of /proc/PID/status in KiB; None once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def rss_mib(pid: int, key: str = "VmRSS") -> float | None:
    kib = proc_status_kib(pid, key)
    return None if kib is None else round(kib / 1024, 1)


def cpu_seconds(pid: int, thread: int | None = None, reaped: bool = False) -> float:
    """User + system CPU time of a process (or of one of its threads) so far; 0 if gone.
    `reaped`: plus that of its children that have ended (a server's per-connection
    processes, gone with their connection)."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def host_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole host, all cores."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / CLK_TCK, total / CLK_TCK


def broker_pids() -> list[int]:
    """RabbitMQ's Erlang VM, to show how busy the broker was (empty if not found)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with suppress(OSError):
                if (entry / "comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry.name))
    return pids


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants now."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo += children.get(pid, [])
    return tree


def listening_pids(port: int) -> list[int]:
    """Processes holding a socket that listens on `port`: the broker the run uses, and not
    the short-lived `beam.smp` of a `rabbitmqctl` another session may be running."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and inodes:
            with suppress(OSError):
                if any(os.readlink(fd) in inodes for fd in (entry / "fd").iterdir()):
                    pids.append(int(entry.name))
    return pids


@dataclass
class CpuSnapshot:
    worker: float
    loop_thread: float
    ftp: float
    broker: float
    own: float
    host_busy: float
    host_total: float

    @classmethod
    def take(cls, worker: int, ftp: int, broker: list[int]) -> CpuSnapshot:
        busy, total = host_cpu()
        return cls(
            cpu_seconds(worker),
            cpu_seconds(worker, thread=worker),  # the main thread runs the event loop
            cpu_seconds(ftp),
            sum(map(cpu_seconds, broker)),
            cpu_seconds(os.getpid()),
            busy,
            total,
        )

    def host_shares_since(self, first: CpuSnapshot) -> tuple[float, float] | None:
        """(all CPUs busy, the part of it no process of this run used) since `first`, in %
        of all cores; None over no time. A high second one means other load disturbed it."""
        elapsed = self.host_total - first.host_total
        if elapsed <= 0:
            return None
        busy = self.host_busy - first.host_busy
        parts = ("worker", "ftp", "broker", "own")
        ours = sum(getattr(self, name) - getattr(first, name) for name in parts)
        return round(100 * busy / elapsed, 1), round(max(0.0, 100 * (busy - ours) / elapsed), 1)


def fd_count(pid: int) -> int | None:
    """Open file descriptors of a process (a leak grows it); None once it is gone."""
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return None


def thread_count(pid: int) -> int | None:
    """The `Threads:` line of /proc/PID/status (a number, not KiB, read the same way)."""
    return proc_status_kib(pid, "Threads")


def child_pids(pid: int) -> list[int]:
    """The process's children, from every one of its threads' `children` lists."""
    children: list[int] = []
    with suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with suppress(OSError):
                children += [int(c) for c in (task / "children").read_text().split()]
    return children


TCP_STATES = {"01": "ESTABLISHED", "06": "TIME_WAIT", "08": "CLOSE_WAIT", "0A": "LISTEN"}


@dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    state: str
    """A name of TCP_STATES, or the kernel's hex code for the rarer states."""


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    with suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(int(target[8:-1]))
    return inodes


def tcp_sockets(pid: int) -> list[TcpSocket]:
    """The TCP sockets (IPv4 and IPv6) this process holds. /proc/PID/net/tcp lists every
    socket of the network namespace, so they are matched to the process's own descriptors
    by inode."""
    inodes = _socket_inodes(pid)
    found = []
    for table in ("tcp", "tcp6"):
        try:
            rows = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and int(fields[9]) in inodes:
                local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
                found.append(TcpSocket(local, remote, TCP_STATES.get(fields[3], fields[3])))
    return found


@dataclass(frozen=True)
class MachineSnapshot:
    """What says whether another load shared the machine: the host's CPU counters
    (steal: time a hypervisor gave this VM's cores to someone else) and the load average."""

    steal_s: float
    total_s: float
    loadavg: tuple[float, float, float]

    @classmethod
    def now(cls) -> MachineSnapshot:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        one, five, fifteen = (float(v) for v in Path("/proc/loadavg").read_text().split()[:3])
        return cls(values[7] / CLK_TCK, sum(values[:8]) / CLK_TCK, (one, five, fifteen))

    def steal_percent_since(self, earlier: MachineSnapshot) -> float:
        total = self.total_s - earlier.total_s
        return 0.0 if total <= 0 else round(100 * (self.steal_s - earlier.steal_s) / total, 1)


def broker_pid(port: int) -> int | None:
    """The broker (among `broker_pids`) listening on `port`: a machine may run several."""
    for pid in broker_pids():
        if any(s.state == "LISTEN" and s.local_port == port for s in tcp_sockets(pid)):
            return pid
    return None
