"""The broker connection's socket, written once per loop iteration instead of once per frame.

aiormq writes each queued frame set (a publish, an ack) with a `write` of its own, and
uvloop sends each at once: a task's notices, its forward and its ack were nine socket writes,
one system call each, though several are queued in the same instant. This transport factory
(aiormq's own extension point) gives aiormq a writer whose transport keeps what is written
during one iteration of the event loop and sends it as one write at the start of the next,
in the order written. Nothing waits longer than that iteration; closing sends what is kept
first, so the connection's last frames (Connection.Close) still go out.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiormq.connection import TCPTransportFactory, TLSTransportFactory, TransportFactory
from yarl import URL


class _CoalescingTransport(asyncio.Transport):
    """A transport that gathers the writes of one loop iteration into one."""

    def __init__(self, inner: asyncio.WriteTransport, keep: object) -> None:
        super().__init__()
        self._inner = inner
        self._keep = keep
        """The first StreamWriter, which closes the socket when collected: kept alive."""
        self._parts: list[bytes] = []

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._parts:
            asyncio.get_running_loop().call_soon(self._flush)
        self._parts.append(bytes(data))

    def writelines(self, list_of_data: Any) -> None:
        for data in list_of_data:
            self.write(data)

    def _flush(self) -> None:
        parts, self._parts = self._parts, []
        if parts and not self._inner.is_closing():
            self._inner.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def write_eof(self) -> None:
        self._flush()
        self._inner.write_eof()

    def can_write_eof(self) -> bool:
        return self._inner.can_write_eof()

    def close(self) -> None:
        self._flush()
        self._inner.close()

    def abort(self) -> None:
        self._parts = []
        self._inner.abort()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._inner.get_protocol()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._inner.set_protocol(protocol)

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size() + sum(len(part) for part in self._parts)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._inner.set_write_buffer_limits(high, low)

    def is_reading(self) -> bool:
        return isinstance(self._inner, asyncio.ReadTransport) and self._inner.is_reading()

    def pause_reading(self) -> None:
        if isinstance(self._inner, asyncio.ReadTransport):
            self._inner.pause_reading()

    def resume_reading(self) -> None:
        if isinstance(self._inner, asyncio.ReadTransport):
            self._inner.resume_reading()


class CoalescingTransportFactory(TransportFactory):
    """aiormq's TCP or TLS connection (by the URL's scheme), its writes gathered."""

    async def create(
        self, url: URL, **kwargs: Any
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        plain = TLSTransportFactory() if url.scheme == "amqps" else TCPTransportFactory()
        reader, writer = await plain.create(url, **kwargs)
        transport = _CoalescingTransport(writer.transport, keep=writer)
        loop = asyncio.get_running_loop()
        protocol = writer.transport.get_protocol()
        if not isinstance(protocol, asyncio.StreamReaderProtocol):  # pragma: no cover
            raise TypeError(f"unexpected protocol {protocol!r}")
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
