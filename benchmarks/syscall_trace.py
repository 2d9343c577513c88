"""Socket writes and FTP commands per task of a worker, counted with strace.

A worker's CPU per task is partly system calls: one `write`/`sendto` per AMQP publish or
ack, one per FTP command, and the transfers. `strace -f -yy` attached to the worker names
each descriptor's TCP peer, so every write can be put on its connection: the broker's port
(AMQP), the FTP server's control port (one command per write: its verb is in the data),
other TCP (FTP data connections) and the rest (eventfd wake-ups, log lines, files).

The count per task divides by the RETR commands seen: each task downloads its zip once, so
the writes of tasks only partly traced (at attach and at exit) cannot skew the ratio much.
strace slows the worker a lot: never read a rate from a traced run.
"""

from __future__ import annotations

import asyncio
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

WRITES = ("write", "writev", "sendto", "sendmsg", "send", "pwrite64")
_CALL = re.compile(
    r"^(?:\d+\s+)?(\w+)\((\d+)(<\w+:\[[^\]]*\]>|<[^>]*>)?(?:, \"((?:[^\"\\]|\\.)*)\")?"
)
_PEER = re.compile(r"TCP:\[[^\]]*->[^\]]*:(\d+)\]")


@dataclass
class WriteCounts:
    """Writes of one traced worker, by connection."""

    amqp: int = 0
    ftp_commands: Counter[str] = field(default_factory=Counter)
    ftp_data: int = 0
    other: int = 0

    def per_task(self) -> dict[str, float | dict[str, float]] | None:
        """Per task (tasks = RETR commands seen), or None if no task was traced."""
        tasks = self.ftp_commands.get("RETR", 0)
        if tasks == 0:
            return None

        def each(count: int) -> float:
            return round(count / tasks, 2)

        return {
            "tasks_traced": tasks,
            "amqp_writes": each(self.amqp),
            "ftp_commands": each(sum(self.ftp_commands.values())),
            "ftp_by_verb": {verb: each(n) for verb, n in sorted(self.ftp_commands.items())},
            "ftp_data_writes": each(self.ftp_data),
            "other_writes": each(self.other),
        }


def count_writes(lines: list[str], broker_port: int, ftp_port: int) -> WriteCounts:
    """Classify the write calls of an `strace -f -yy -e trace=<WRITES>` output."""
    counts = WriteCounts()
    for line in lines:
        match = _CALL.match(line)
        if match is None or match.group(1) not in WRITES:
            continue  # a `<... resumed>` line, a signal, an exit
        descriptor, data = match.group(3) or "", match.group(4)
        peer = _PEER.search(descriptor)
        if peer is None:
            counts.other += 1
        elif int(peer.group(1)) == broker_port:
            counts.amqp += 1
        elif int(peer.group(1)) == ftp_port:
            verb = (data or "?").split(" ", 1)[0].split("\\", 1)[0].upper() or "?"
            counts.ftp_commands[verb] += 1
        else:
            counts.ftp_data += 1  # a worker has no other peer: the FTP server's data ports
    return counts


async def start_tracer(pid: int, out: Path) -> asyncio.subprocess.Process:
    """strace on every thread of `pid`, its writes only, into `out`."""
    if shutil.which("strace") is None:
        raise RuntimeError("--strace needs strace on PATH (apt-get install strace)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tracer = await asyncio.create_subprocess_exec(
        "strace",
        "-f",  # every thread (and child) of the worker
        "-qq",
        "-yy",  # descriptors with their TCP peers
        "-s",
        "8",  # enough of the data for an FTP verb
        "-e",
        f"trace={','.join(WRITES)}",
        "-o",
        str(out),
        "-p",
        str(pid),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    await asyncio.sleep(0.5)  # strace attaches to each thread before the first task counts
    return tracer


async def stop_tracer(tracer: asyncio.subprocess.Process) -> None:
    """strace ends when the traced worker has exited."""
    try:
        await asyncio.wait_for(tracer.wait(), 30)
    except TimeoutError:
        tracer.terminate()
        await tracer.wait()


def read_counts(out: Path, broker_port: int, ftp_port: int) -> WriteCounts:
    return count_writes(out.read_text(errors="replace").splitlines(), broker_port, ftp_port)
