"""A TCP relay to the broker that a test can cut: `drop` closes every connection through it
at once (the client sees a lost broker), and while `held` new connections are accepted and
closed at once, so a client stays disconnected for as long as the test wants."""

from __future__ import annotations

import asyncio
from contextlib import suppress

from tests.support.services import Broker


class DroppingRelay:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker
        self.held = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """The port to connect to."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return int(self._server.sockets[0].getsockname()[1])

    def drop(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self.drop()
        await self._server.wait_closed()
        await asyncio.gather(*self._pipes)

    async def _relay(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        if self.held:
            await _shut(client_out)
            return
        broker_in, broker_out = await asyncio.open_connection(self._broker.host, self._broker.port)
        self._writers.update((client_out, broker_out))
        pipes = [
            asyncio.create_task(_pipe(client_in, broker_out)),
            asyncio.create_task(_pipe(broker_in, client_out)),
        ]
        self._pipes.update(pipes)
        await asyncio.gather(*pipes)
        self._pipes.difference_update(pipes)
        self._writers.difference_update((client_out, broker_out))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    except ConnectionError:
        pass
    finally:
        await _shut(sink)


async def _shut(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(ConnectionError):
        await writer.wait_closed()
