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


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU time of a process (or of one of its threads) so far; 0 if gone."""
    path = f"/proc/{pid}/task/{thread}/stat" if thread else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


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
