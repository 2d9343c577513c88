"""The metrics derived from notices, the health endpoint, and the metrics settings."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.support.fakes import FakeDelivery, FakePublisher
from tests.support.lifecycle_node import encode, make_node, task
from ulos_py.errors import ConfigError
from ulos_py.lifecycle import process
from ulos_py.metrics import STAGE_LABEL_LIMIT, MetricsServer, NodeMetrics, StageLabels
from ulos_py.notices import Event, NoticeContext
from ulos_py.reporting import NoticeRoutes, Reporter
from ulos_py.settings import Settings, load_settings
from ulos_py.supervisor import check_metrics_ports, worker_settings


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def sample(metrics: NodeMetrics, name: str, **labels: str) -> float:
    """A sample's value; 0 when it was never touched (so a test asserts values, not None)."""
    value = metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def notice(event: str, stage: str | None = "check", **fields: Any) -> dict[str, Any]:
    where = None if stage is None else {"exchange": "processing", "routingKey": stage}
    return {"taskId": "t-1", "event": event, "stage": where, **fields}


def play(metrics: NodeMetrics, clock: Clock, *steps: tuple[float, dict[str, Any]]) -> None:
    """One delivery's notices, each `seconds` after the one before."""
    observe = metrics.observer()
    for seconds, body in steps:
        clock.now += seconds
        observe(body)


# --- the stage label ---------------------------------------------------------------------


def test_stage_labels_keep_the_first_keys_then_say_other() -> None:
    labels = StageLabels(limit=2)

    assert [labels(key) for key in ("a", "b", "c", "a", "d", "b")] == [
        "a",
        "b",
        "other",
        "a",
        "other",
        "b",
    ]
    assert labels(None) == "none"


def test_a_sender_inventing_stage_keys_cannot_grow_the_metrics() -> None:
    metrics = NodeMetrics("n", "q")
    for i in range(STAGE_LABEL_LIMIT + 50):
        metrics.observer()(notice("received", stage=f"stage-{i}"))

    stages = {
        s.labels["stage"]
        for family in metrics.registry.collect()
        if family.name == "ulos_tasks_received"
        for s in family.samples
        if s.name == "ulos_tasks_received_total"
    }
    assert len(stages) == STAGE_LABEL_LIMIT + 1
    assert sample(metrics, "ulos_tasks_received_total", stage="other") == 50
    assert sample(metrics, "ulos_tasks_received_total", stage="stage-0") == 1


# --- counts and durations from a delivery's notices ---------------------------------------


def test_a_passing_task_is_counted_and_each_step_timed() -> None:
    clock = Clock()
    metrics = NodeMetrics("n", "q", clock=clock)

    play(
        metrics,
        clock,
        (0, notice("received", redelivered=False)),
        (0.3, notice("downloaded")),
        (0.01, notice("execution_started")),
        (2.0, notice("execution_finished", outcome="pass")),
        (0.2, notice("uploaded")),
        (0.05, notice("forwarded")),
        (0.001, notice("acked")),
    )

    assert sample(metrics, "ulos_tasks_received_total", stage="check") == 1
    assert sample(metrics, "ulos_redeliveries_total", stage="check") == 0
    assert sample(metrics, "ulos_tasks_total", stage="check", outcome="pass") == 1
    assert sample(metrics, "ulos_tasks_total", stage="check", outcome="fail") == 0
    for step, seconds in (("download", 0.3), ("execution", 2.0), ("upload", 0.2)):
        name = f"ulos_{step}_duration_seconds"
        assert sample(metrics, f"{name}_count", stage="check") == 1
        assert sample(metrics, f"{name}_sum", stage="check") == pytest.approx(seconds)
    assert sample(metrics, "ulos_forward_duration_seconds_sum", stage="check") == pytest.approx(
        0.05
    )
    # 2.0 s falls in the 2.5 s bucket, not in the 1 s one
    execution = "ulos_execution_duration_seconds_bucket"
    assert sample(metrics, execution, stage="check", le="1.0") == 0
    assert sample(metrics, execution, stage="check", le="2.5") == 1


def test_a_failing_task_without_a_next_stage_is_counted_as_fail() -> None:
    clock = Clock()
    metrics = NodeMetrics("n", "q", clock=clock)

    play(
        metrics,
        clock,
        (0, notice("received")),
        (0.1, notice("downloaded")),
        (0, notice("execution_started")),
        (1, notice("execution_finished", outcome="fail")),
        (0.1, notice("uploaded")),
        (0, notice("completed")),
        (0, notice("acked")),
    )

    assert sample(metrics, "ulos_tasks_total", stage="check", outcome="fail") == 1
    assert sample(metrics, "ulos_forward_duration_seconds_count", stage="check") == 0
    assert sample(metrics, "ulos_upload_duration_seconds_count", stage="check") == 1


def test_a_crash_counts_its_kind_once_and_is_not_also_returned() -> None:
    clock = Clock()
    metrics = NodeMetrics("n", "q", clock=clock)

    play(
        metrics,
        clock,
        (0, notice("received")),
        (0.1, notice("downloaded")),
        (0, notice("execution_started")),
        (0.5, notice("crashed", error={"kind": "execution", "detail": "boom"})),
        (0, notice("rejected", requeued=True)),
    )

    assert sample(metrics, "ulos_crashes_total", stage="check", kind="execution") == 1
    assert sample(metrics, "ulos_tasks_total", stage="check", outcome="crash") == 1
    assert sample(metrics, "ulos_tasks_total", stage="check", outcome="returned") == 0
    assert sample(metrics, "ulos_execution_duration_seconds_count", stage="check") == 0


def test_a_malformed_message_is_counted_under_stage_none() -> None:
    metrics = NodeMetrics("n", "q")

    play(
        metrics,
        Clock(),
        (0, notice("crashed", stage=None, error={"kind": "malformed", "detail": "not JSON"})),
        (0, notice("rejected", stage=None, requeued=False)),
    )

    assert sample(metrics, "ulos_crashes_total", stage="none", kind="malformed") == 1
    assert sample(metrics, "ulos_tasks_received_total", stage="none") == 0


def test_a_task_handed_back_on_shutdown_is_returned() -> None:
    metrics = NodeMetrics("n", "q")

    play(
        metrics,
        Clock(),
        (0, notice("received", redelivered=True)),
        (0, notice("rejected", requeued=True)),
    )

    assert sample(metrics, "ulos_tasks_total", stage="check", outcome="returned") == 1
    assert sample(metrics, "ulos_redeliveries_total", stage="check") == 1


def test_label_values_outside_our_enums_become_unknown() -> None:
    metrics = NodeMetrics("n", "q")

    play(
        metrics,
        Clock(),
        (0, notice("execution_finished", outcome="maybe")),
        (0, notice("acked")),
        (0, notice("crashed", error={"kind": "cosmic-ray"})),
        (0, {"event": 42}),  # not a word: ignored
    )

    assert sample(metrics, "ulos_tasks_total", stage="check", outcome="unknown") == 1
    assert sample(metrics, "ulos_crashes_total", stage="check", kind="unknown") == 1


def test_deliveries_are_timed_apart_even_when_they_interleave() -> None:
    clock = Clock()
    metrics = NodeMetrics("n", "q", clock=clock)
    first, second = metrics.observer(), metrics.observer()

    first(notice("received"))
    clock.now += 1
    second(notice("received"))
    clock.now += 3
    first(notice("downloaded"))  # 4 s after its own received, not 3
    clock.now += 1
    second(notice("downloaded"))  # 4 s too

    assert sample(metrics, "ulos_download_duration_seconds_sum", stage="check") == 8


# --- the lifecycle, unchanged, feeds the observer -----------------------------------------


async def test_the_lifecycle_feeds_the_metrics_through_its_notices(tmp_path: Path) -> None:
    metrics = NodeMetrics("n", "q")
    node = make_node(tmp_path)
    deps = replace(node.deps, observe=metrics.observer)

    for stage, redelivered in (("pass", False), ("fail", True), ("crash", False)):
        delivery = FakeDelivery(encode(task(stage)), delivery_count=2 if redelivered else 1)
        await process(delivery, deps)
    await process(FakeDelivery(b"{not json"), deps)
    await process(FakeDelivery(encode(task("no-such-stage"))), deps)

    assert sample(metrics, "ulos_tasks_total", stage="pass", outcome="pass") == 1
    assert sample(metrics, "ulos_tasks_total", stage="fail", outcome="fail") == 1
    assert sample(metrics, "ulos_tasks_total", stage="crash", outcome="crash") == 1
    assert sample(metrics, "ulos_crashes_total", stage="crash", kind="execution") == 1
    assert sample(metrics, "ulos_crashes_total", stage="none", kind="malformed") == 1
    assert sample(metrics, "ulos_crashes_total", stage="no-such-stage", kind="no_executor") == 1
    assert sample(metrics, "ulos_redeliveries_total", stage="fail") == 1
    assert sample(metrics, "ulos_redeliveries_total", stage="pass") == 0
    assert sample(metrics, "ulos_execution_duration_seconds_count", stage="pass") == 1
    assert sample(metrics, "ulos_forward_duration_seconds_count", stage="fail") == 1
    received = [n for n in node.logs() if n["event"] == "received"]
    assert [n["redelivered"] for n in received] == [False, True, False, False]


async def test_an_observer_that_fails_never_stops_a_notice() -> None:
    def broken(notice: Any) -> None:
        raise ValueError("bug in the metrics")

    publisher = FakePublisher()
    routes = NoticeRoutes("logs", "l", "crashes", "c")
    report = Reporter(publisher, routes, NoticeContext("n", received={}), broken)
    with capture_logs() as logs:
        report.log(Event.RECEIVED, "hello")
        await report.flush()

    assert [e.body["event"] for e in publisher.to("logs", "l")] == ["received"]
    assert [entry["event"] for entry in logs] == ["notice_observer_failed"]


# --- connection, consuming and the health endpoint ----------------------------------------


def test_connection_losses_are_counted_once_per_outage() -> None:
    metrics = NodeMetrics("n", "q")
    metrics.set_connected(True)

    for up in (False, False, False, True, False, True):  # failed restores repeat False
        metrics.connection_changed(up)
    metrics.set_connected(False)  # the node's own close is not a loss

    assert sample(metrics, "ulos_broker_connection_losses_total") == 2
    assert sample(metrics, "ulos_broker_connected") == 0


@pytest.fixture
def served() -> Iterator[tuple[NodeMetrics, str]]:
    metrics = NodeMetrics("node-7", "queue-a")
    server = MetricsServer(metrics, "127.0.0.1", 0)
    try:
        yield metrics, f"http://127.0.0.1:{server.port}"
    finally:
        server.close()


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode()


def test_health_is_200_only_while_connected_and_consuming(
    served: tuple[NodeMetrics, str],
) -> None:
    metrics, base = served
    metrics.count_in_flight(lambda: 3)

    status, kind, body = get(f"{base}/healthz")
    assert (status, kind) == (503, "application/json")
    assert json.loads(body) == {
        "healthy": False,
        "connected": False,
        "consuming": False,
        "inFlight": 3,
        "nodeId": "node-7",
        "queue": "queue-a",
    }

    metrics.set_connected(True)
    assert get(f"{base}/healthz")[0] == 503  # connected, not yet consuming
    metrics.set_consuming(True)
    status, _, body = get(f"{base}/healthz")
    assert status == 200
    assert json.loads(body)["healthy"] is True
    metrics.connection_changed(False)
    assert get(f"{base}/healthz")[0] == 503


def test_metrics_are_served_in_the_prometheus_text_format(
    served: tuple[NodeMetrics, str],
) -> None:
    metrics, base = served
    metrics.count_in_flight(lambda: 2)
    metrics.set_connected(True)
    metrics.observer()(notice("received"))

    status, kind, body = get(f"{base}/metrics")

    assert status == 200
    assert kind.startswith("text/plain")
    lines = body.splitlines()
    assert 'ulos_tasks_received_total{stage="check"} 1.0' in lines
    assert "ulos_tasks_in_flight 2.0" in lines
    assert "ulos_broker_connected 1.0" in lines
    assert "ulos_consuming 0.0" in lines
    assert 'ulos_node_info{node_id="node-7",queue="queue-a"} 1.0' in lines
    assert any(line.startswith("process_resident_memory_bytes ") for line in lines)
    assert get(f"{base}/other")[0] == 404


def test_two_nodes_in_one_process_count_apart() -> None:
    one, two = NodeMetrics("a", "q"), NodeMetrics("b", "q")
    one.observer()(notice("received"))

    assert sample(one, "ulos_tasks_received_total", stage="check") == 1
    assert sample(two, "ulos_tasks_received_total", stage="check") == 0


def test_a_port_in_use_is_a_configuration_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"ULOS_METRICS_PORT: .*127.0.0.1:{port}"):
            MetricsServer(NodeMetrics("n", "q"), "127.0.0.1", port)


# --- settings and worker ports ------------------------------------------------------------

REQUIRED = {
    "MESSAGE_BROKER_LOGS_EXCHANGE": "logs",
    "MESSAGE_BROKER_LOGS_ROUTING_KEY": "l",
    "MESSAGE_BROKER_CRASH_EXCHANGE": "crashes",
    "MESSAGE_BROKER_CRASH_ROUTING_KEY": "c",
    "MESSAGE_BROKER_CONSUMPTION_QUEUE": "q",
}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("ULOS_METRICS_PORT", raising=False)
    monkeypatch.delenv("ULOS_METRICS_HOST", raising=False)
    return monkeypatch


def test_metrics_are_off_by_default_and_local_when_on(environment: pytest.MonkeyPatch) -> None:
    assert load_settings().metrics_port == 0
    assert load_settings().metrics_host == "127.0.0.1"
    environment.setenv("ULOS_METRICS_PORT", "")
    assert load_settings().metrics_port == 0
    environment.setenv("ULOS_METRICS_PORT", "9464")
    assert load_settings().metrics_port == 9464


@pytest.mark.parametrize("bad", ["http", "-1", "70000"])
def test_a_bad_metrics_port_names_the_variable(environment: pytest.MonkeyPatch, bad: str) -> None:
    environment.setenv("ULOS_METRICS_PORT", bad)
    with pytest.raises(ConfigError, match="ULOS_METRICS_PORT"):
        load_settings()


def settings(**values: Any) -> Settings:
    return Settings(**{**REQUIRED, **values})


def test_each_worker_serves_metrics_on_its_own_port() -> None:
    base = settings(ULOS_METRICS_PORT=9400, ULOS_PROCESSES=3)

    ports = [worker_settings(base, index, 1000 + index).metrics_port for index in (1, 2, 3)]

    assert ports == [9400, 9401, 9402]
    assert worker_settings(settings(), 2, 1002).metrics_port == 0  # off stays off
    check_metrics_ports(base)


def test_worker_ports_past_the_last_port_stop_the_node() -> None:
    with pytest.raises(ConfigError, match="ULOS_METRICS_PORT: 3 worker processes need ports"):
        check_metrics_ports(settings(ULOS_METRICS_PORT=65534, ULOS_PROCESSES=3))
    check_metrics_ports(settings(ULOS_METRICS_PORT=65533, ULOS_PROCESSES=3))
