"""The broker connection's writes: gathered per loop iteration, in order, none lost on close."""

from __future__ import annotations

import asyncio
from typing import Any

from ulos_py.adapters.amqp_transport import _CoalescingTransport


class _Socket(asyncio.WriteTransport):
    """A transport that records each write it is given: one write, one system call."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


async def test_the_writes_of_one_iteration_leave_as_one_in_order() -> None:
    socket = _Socket()
    transport = _CoalescingTransport(socket, keep=None)
    for frame in (b"notice-1;", b"notice-2;", b"forward;"):
        transport.write(frame)
    assert socket.writes == []  # nothing sent within the iteration
    await asyncio.sleep(0)
    assert socket.writes == [b"notice-1;notice-2;forward;"]
    transport.write(b"ack;")
    await asyncio.sleep(0)
    assert socket.writes == [b"notice-1;notice-2;forward;", b"ack;"]


async def test_closing_sends_what_was_kept_first() -> None:
    socket = _Socket()
    transport = _CoalescingTransport(socket, keep=None)
    transport.write(b"connection.close")
    transport.close()
    assert socket.writes == [b"connection.close"]
    assert socket.closed
    await asyncio.sleep(0)  # the scheduled flush finds nothing left to send
    assert socket.writes == [b"connection.close"]


async def test_nothing_is_written_to_a_socket_already_closing() -> None:
    socket = _Socket()
    transport = _CoalescingTransport(socket, keep=None)
    transport.write(b"late")
    socket.closed = True
    await asyncio.sleep(0)
    assert socket.writes == []
