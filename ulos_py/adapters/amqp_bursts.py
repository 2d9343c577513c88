"""A broker connection whose socket is read in bursts: for a node's stream of cancels.

A node pays for a cancel message mostly in the wake-up and the client's per-read machinery
(the loop's read, aiormq's frame parsing), not in the cancel itself: a flood of separate
cancel messages read as they come costs it about 70 µs each. Read in bursts, the kernel's
socket buffer gathers the messages of a fraction of a second and the loop takes them in a
few large reads: a third less CPU a message, for at most `interval` more latency (SPEC §8
gives a running task 2 s to stop; 0.2 s of it is spent here).

This transport factory (aiormq's extension point, as `amqp_transport`) gives a connection
that reads continuously until `bursts()` is called, then keeps its socket paused and opens
it every `interval` for OPEN_FOR (one loop iteration or two: enough to drain what the kernel
holds). Each new connection (a reconnect) starts reading continuously again, so its
handshake, its channels and the catch-up read of the stream are not slowed; its owner calls
`bursts()` again once caught up. Only this connection waits: a node's tasks, their
deliveries and confirms are on another one. While paused, the broker keeps sending until the
socket's buffers or the consumer's credit are full, then waits; nothing is lost. The
connection's heartbeats (every 30 s at the default 60 s timeout) are read late by at most
`interval`.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any, cast

from aiormq.connection import TransportFactory
from yarl import URL

from ulos_py.adapters.amqp_transport import CoalescingTransportFactory

BURST_INTERVAL = 0.2
"""Seconds the socket stays paused between two bursts."""
OPEN_FOR = 0.003
"""Seconds a burst keeps the socket open: past the loop's next poll for readable sockets."""
SOCKET_BUFFER = 1024 * 1024
"""The socket's receive buffer asked of the kernel: what the broker may send while it is
paused (the stream consumer's credit of single cancels is about 300 KiB). The default starts
at 128 KiB and grows only with what the program reads, which a paused socket does not."""
READ_BUFFER_LIMIT = 4 * 1024 * 1024
"""The stream reader's buffer before it pauses the socket itself: above what a burst holds
(the consumer's credit in messages), so the pausing stays this module's alone."""


class _Gate:
    """Pauses and opens one connection's transport on a timer, once told to."""

    def __init__(self, transport: asyncio.Transport, interval: float) -> None:
        self._transport = transport
        self._interval = interval
        self._timer: asyncio.TimerHandle | None = None
        self.bursting = False

    def start(self) -> None:
        if not self.bursting:
            self.bursting = True
            self._pause()

    def _pause(self) -> None:
        if self._transport.is_closing():
            return
        self._transport.pause_reading()
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._open)

    def _open(self) -> None:
        if self._transport.is_closing():
            return
        self._transport.resume_reading()
        self._timer = asyncio.get_running_loop().call_later(OPEN_FOR, self._pause)

    def reading(self) -> bool:
        return not self._transport.is_closing() and self._transport.is_reading()


class BurstReading(TransportFactory):
    """aiormq's connection, its writes gathered (CoalescingTransportFactory), its reads
    switched to bursts by `bursts()` until the next reconnect."""

    def __init__(self, interval: float = BURST_INTERVAL) -> None:
        self.interval = interval
        self._gate: _Gate | None = None

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        kwargs.setdefault("limit", READ_BUFFER_LIMIT)
        reader, writer = await CoalescingTransportFactory().create(url, **kwargs)
        sock = writer.get_extra_info("socket")
        if sock is not None:  # the kernel keeps a burst's worth while the socket is paused
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SOCKET_BUFFER)
        # The writer's transport is the connection's whole socket: it reads too.
        self._gate = _Gate(cast(asyncio.Transport, writer.transport), self.interval)
        return reader, writer

    def bursts(self) -> None:
        """From now on, the current connection's socket is read every `interval`."""
        if self._gate is not None:
            self._gate.start()

    @property
    def bursting(self) -> bool:
        return self._gate is not None and self._gate.bursting

    def reading(self) -> bool:
        """Whether the current connection's socket is being read at this instant."""
        return self._gate is not None and self._gate.reading()
