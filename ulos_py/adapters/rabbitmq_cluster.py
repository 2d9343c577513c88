"""A robust connection that knows every broker of a RabbitMQ cluster and moves on.

aio-pika's `connect_robust` reconnects to the one URL it was given (aio-pika issue #141:
no list of hosts), so when that broker goes away for good a node would wait for it for
ever while its cluster peers serve the queues. `RotatingConnection` is aio-pika's own
`RobustConnection` (it still restores channels, consumers and callbacks) whose every
connection attempt goes to the next broker of the list: each attempt of aio-pika's
reconnect loop starts by clearing `transport`, so that is where the next one is chosen.

Back-off is by round: while attempts fail, one broker after another is tried every
`reconnect_interval` seconds; after each full round of failures the interval doubles, up to
`BACKOFF_MAX`, and it is back to the start as soon as a broker answers.
"""

from __future__ import annotations

from typing import Any

from aio_pika import RobustConnection
from yarl import URL

BACKOFF_MAX = 30.0
"""Seconds between attempts at most, once every broker has failed several rounds."""


class RotatingConnection(RobustConnection):
    """A robust connection over `endpoints` (URLs of one cluster's brokers), in turn."""

    def __init__(self, url: URL, *, endpoints: tuple[URL, ...] = (), **kwargs: Any) -> None:
        self._endpoints = endpoints or (URL(url),)
        self._turn = 0
        self._failures = 0
        """Attempts since a broker last answered."""
        self._underlay: Any = None
        super().__init__(url, **kwargs)
        self._base_interval = float(self.reconnect_interval)

    @property
    def transport(self) -> Any:
        return self._underlay

    @transport.setter
    def transport(self, value: Any) -> None:
        # Also set (to None) by Connection.__init__ before `_close_called` exists: no attempt.
        if value is None and not getattr(self, "_close_called", True):
            self._next_attempt()
        self._underlay = value

    def _next_attempt(self) -> None:
        """A connection attempt begins: the broker after the last one tried, unless this is
        the first attempt of all (then the first of the list)."""
        if self.connection_attempt or self._failures:
            self._turn = (self._turn + 1) % len(self._endpoints)
            self._failures += 1
            rounds = self._failures // len(self._endpoints)
            self.reconnect_interval = min(self._base_interval * 2**rounds, BACKOFF_MAX)
        self.url = self._endpoints[self._turn]

    async def _on_connected(self) -> None:
        self._failures = 0
        self.reconnect_interval = self._base_interval
        await super()._on_connected()

    @property
    def broker(self) -> str:
        """`host:port` of the broker this connection is on (or trying)."""
        return f"{self.url.host}:{self.url.port}"
