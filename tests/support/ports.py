"""Ports for the servers the tests start.

`free_port` asks the kernel for one, which it takes from its ephemeral range: the range it
also gives every outgoing connection its local port from. A server that goes away and must
come back on the same port (a broker restarted, an FTP server taken away) could then find it
held by some client's connection (seen: a cluster member that could not open its listener
after a restart), so those take a `steady_port`, below that range.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def steady_port() -> int:
    """A free port no outgoing connection will be given."""
    try:
        ephemeral_low = int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768  # Linux's default
    for _ in range(200):
        port = random.randrange(20000, ephemeral_low)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port between 20000 and {ephemeral_low}")
