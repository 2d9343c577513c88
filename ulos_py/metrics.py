"""Prometheus metrics and the health endpoint of one node (`ULOS_METRICS_PORT`).

Nothing here watches the lifecycle directly. Every delivery's `Reporter` hands each log
notice it sends to a `TaskMetrics` (the `NoticeObserver` of that delivery), which counts
and times the task from the events alone:

    received ─download─ downloaded   execution_started ─execution─ execution_finished
    execution_finished ─upload─ uploaded ─forward─ forwarded

The task pool gives the tasks in flight, and the broker connection's close/reconnect
callbacks the connection state. Each node owns its own `CollectorRegistry`, so several
nodes in one process (the tests) never share a counter.

Label values stay few: `outcome` and `kind` come from our own enums, and `stage` (the
routing key, chosen by whoever sends the task) keeps its name for the first
`STAGE_LABEL_LIMIT` keys a node sees; later ones are counted as `other`. A notice with no
stage (a malformed message, a task without a routing tree) is counted as `none`.

The HTTP server is the standard library's WSGI server in a daemon thread, serving
prometheus-client's app on `/metrics` and the node's health on `/healthz`: 200 while the
broker connection is up and the consumer is active, 503 otherwise (starting, waiting for
the broker, reconnecting, draining), with the state as JSON either way.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    make_wsgi_app,
)
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ulos_py.errors import ConfigError, CrashKind
from ulos_py.models import Outcome
from ulos_py.notices import Event

STAGE_LABEL_LIMIT = 100
"""Distinct stage label values a node keeps; the routing keys seen after them are `other`."""
OTHER = "other"
NO_STAGE = "none"
UNKNOWN = "unknown"

DURATION_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    *(30.0, 60.0, 120.0, 300.0, 600.0, 1800.0),
)
"""Seconds: milliseconds for a small FTP transfer up to half an hour for a docker run."""


class StageLabels:
    """The `stage` label of a routing key: its own name for the first `limit` keys, then
    `other`, so a sender inventing keys cannot grow the node's memory without bound."""

    def __init__(self, limit: int = STAGE_LABEL_LIMIT) -> None:
        self._limit = limit
        self._known: set[str] = set()

    def __call__(self, routing_key: str | None) -> str:
        if routing_key is None:
            return NO_STAGE
        if routing_key in self._known:
            return routing_key
        if len(self._known) < self._limit:
            self._known.add(routing_key)
            return routing_key
        return OTHER


@dataclass(frozen=True)
class Health:
    """What `/healthz` says: healthy while connected to the broker and consuming."""

    node_id: str
    queue: str
    connected: bool
    consuming: bool
    in_flight: int
    broker: str = ""
    """`host:port` of the broker the node is on, or trying (one of MESSAGE_BROKER_HOST)."""

    @property
    def healthy(self) -> bool:
        return self.connected and self.consuming

    def wire(self) -> dict[str, Any]:
        return {
            "healthy": self.healthy,
            "connected": self.connected,
            "consuming": self.consuming,
            "inFlight": self.in_flight,
            "nodeId": self.node_id,
            "queue": self.queue,
            "broker": self.broker,
        }


@dataclass(frozen=True)
class Step:
    """A timed step of a task: from the `since` event to the one it is filed under."""

    since: str
    histogram: Histogram


class NodeMetrics:
    """One node's registry and metrics, and the state its health endpoint reports.

    Written from the node's event loop; read by the HTTP server's threads (prometheus-client
    locks its values; the flags are single assignments).
    """

    def __init__(
        self,
        node_id: str,
        queue: str,
        *,
        stage_limit: int = STAGE_LABEL_LIMIT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node_id, self.queue = node_id, queue
        self.clock = clock
        self.stages = StageLabels(stage_limit)
        self.registry = registry = CollectorRegistry()
        for collector in (ProcessCollector, PlatformCollector, GCCollector):
            collector(registry=registry)
        Info("ulos_node", "This node.", registry=registry).info(
            {"node_id": node_id, "queue": queue}
        )
        self.received = Counter(
            "ulos_tasks_received", "Deliveries taken and parsed.", ["stage"], registry=registry
        )
        self.redeliveries = Counter(
            "ulos_redeliveries",
            "Deliveries seen before: redelivered by the broker or requeued after a crash.",
            ["stage"],
            registry=registry,
        )
        self.tasks = Counter(
            "ulos_tasks",
            "Tasks ended: acked after the executor's pass or fail, crashed, or returned to "
            "the queue unfinished on shutdown.",
            ["stage", "outcome"],
            registry=registry,
        )
        self.crashes = Counter(
            "ulos_crashes", "Crashed tasks by error kind.", ["stage", "kind"], registry=registry
        )

        def duration(step: str, what: str) -> Histogram:
            return Histogram(
                f"ulos_{step}_duration_seconds",
                what,
                ["stage"],
                buckets=DURATION_BUCKETS,
                registry=registry,
            )

        self.download = duration("download", "From received to downloaded and checked.")
        self.execution = duration("execution", "From execution_started to execution_finished.")
        self.upload = duration("upload", "From execution_finished to packed and uploaded.")
        self.forward = duration("forward", "From uploaded to the next stage's confirmed publish.")
        self.steps: dict[str, Step] = {
            Event.DOWNLOADED: Step(Event.RECEIVED, self.download),
            Event.EXECUTION_FINISHED: Step(Event.EXECUTION_STARTED, self.execution),
            Event.UPLOADED: Step(Event.EXECUTION_FINISHED, self.upload),
            Event.FORWARDED: Step(Event.UPLOADED, self.forward),
        }
        """The histogram each event ends, and the event its step starts at."""
        self._in_flight: Callable[[], int] = lambda: 0
        Gauge(
            "ulos_tasks_in_flight", "Deliveries taken and not yet settled.", registry=registry
        ).set_function(lambda: self._in_flight())
        self._connected_gauge = Gauge(
            "ulos_broker_connected", "1 while the broker connection is up.", registry=registry
        )
        self._losses = Counter(
            "ulos_broker_connection_losses",
            "Times the broker connection was lost.",
            registry=registry,
        )
        self._consuming_gauge = Gauge(
            "ulos_consuming", "1 while the node's consumer is active.", registry=registry
        )
        self._broker_info = Info(
            "ulos_broker", "The broker this node is on, or trying.", registry=registry
        )
        self.broker = ""
        self.connected = False
        self.consuming = False

    def observer(self) -> TaskMetrics:
        """A fresh observer for one delivery's notices (the `Deps.observe` factory)."""
        return TaskMetrics(self)

    def count_in_flight(self, source: Callable[[], int]) -> None:
        self._in_flight = source

    def set_connected(self, up: bool) -> None:
        self.connected = up
        self._connected_gauge.set(int(up))

    def connection_changed(self, up: bool) -> None:
        """The broker connection's own news: lost (counted once per outage) or restored."""
        if self.connected and not up:
            self._losses.inc()
        self.set_connected(up)

    def set_broker(self, broker: str) -> None:
        """Which broker of MESSAGE_BROKER_HOST the connection is on (`host:port`)."""
        self.broker = broker
        self._broker_info.info({"broker": broker})

    def set_consuming(self, on: bool) -> None:
        self.consuming = on
        self._consuming_gauge.set(int(on))

    def health(self) -> Health:
        in_flight = self._in_flight()
        return Health(
            self.node_id, self.queue, self.connected, self.consuming, in_flight, self.broker
        )


def _routing_key(notice: Mapping[str, Any]) -> str | None:
    stage = notice.get("stage")
    key = stage.get("routingKey") if isinstance(stage, Mapping) else None
    return key if isinstance(key, str) else None


def _known(value: object, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else UNKNOWN


_OUTCOMES = frozenset(outcome.value for outcome in Outcome)
_KINDS = frozenset(kind.value for kind in CrashKind)


class TaskMetrics:
    """One delivery's notices turned into counts and step durations (a NoticeObserver)."""

    def __init__(self, node: NodeMetrics) -> None:
        self._node = node
        self._at: dict[str, float] = {}
        self._outcome = UNKNOWN
        self._crashed = False

    def __call__(self, notice: Mapping[str, Any]) -> None:
        event = notice.get("event")
        if not isinstance(event, str):
            return
        node, now = self._node, self._node.clock()
        self._at[event] = now
        stage = node.stages(_routing_key(notice))
        step = node.steps.get(event)
        if step is not None and step.since in self._at:
            step.histogram.labels(stage).observe(now - self._at[step.since])
        self._count(event, notice, stage)

    def _count(self, event: str, notice: Mapping[str, Any], stage: str) -> None:
        node = self._node
        if event == Event.RECEIVED:
            node.received.labels(stage).inc()
            if notice.get("redelivered") is True:
                node.redeliveries.labels(stage).inc()
        elif event == Event.EXECUTION_FINISHED:
            self._outcome = _known(notice.get("outcome"), _OUTCOMES)
        elif event == Event.CRASHED:
            error = notice.get("error")
            kind = error.get("kind") if isinstance(error, Mapping) else None
            node.crashes.labels(stage, _known(kind, _KINDS)).inc()
            node.tasks.labels(stage, "crash").inc()
            self._crashed = True
        elif event == Event.ACKED:
            node.tasks.labels(stage, self._outcome).inc()
        elif event == Event.REJECTED and not self._crashed:
            node.tasks.labels(stage, "returned").inc()


WSGI_POLL = 0.2
"""Seconds between the server thread's checks for a stop request."""


class _QuietHandler(WSGIRequestHandler):
    """No access log on stderr: the node's log is structured."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def app(metrics: NodeMetrics) -> WSGIApplication:
    """`/metrics` in Prometheus's text format, `/healthz` as JSON (200 or 503)."""
    prometheus = make_wsgi_app(metrics.registry)

    def route(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            served: Iterable[bytes] = prometheus(environ, start_response)
            return served
        if path == "/healthz":
            health = metrics.health()
            status = "200 OK" if health.healthy else "503 Service Unavailable"
            return _reply(start_response, status, "application/json", json.dumps(health.wire()))
        return _reply(start_response, "404 Not Found", "text/plain", "try /metrics or /healthz\n")

    return route


def _reply(start_response: StartResponse, status: str, kind: str, text: str) -> list[bytes]:
    body = text.encode()
    start_response(status, [("Content-Type", kind), ("Content-Length", str(len(body)))])
    return [body]


class MetricsServer:
    """The HTTP endpoint, served from a daemon thread until `close`."""

    def __init__(self, metrics: NodeMetrics, host: str, port: int) -> None:
        try:
            family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
            server_class = type("Server", (ThreadingWSGIServer,), {"address_family": family})
            self._server: WSGIServer = make_server(
                host, port, app(metrics), server_class, handler_class=_QuietHandler
            )
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise ConfigError(
                f"ULOS_METRICS_PORT: cannot serve metrics on {host}:{port} ({reason}); "
                "choose a free port, or another ULOS_METRICS_HOST"
            ) from exc
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": WSGI_POLL},
            name=f"ulos-py-metrics-{port}",
            daemon=True,
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def close(self) -> None:
        """Stop serving and free the port (blocks up to `WSGI_POLL` seconds)."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
