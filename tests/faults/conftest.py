"""Services a fault case may break, and the report of every case's accounting.

The shared RabbitMQ and Docker engine serve other tests and people at the same time, so
nothing here stops them: the broker case runs its own RabbitMQ node (its own name, ports,
data and cookie under the test's temp folder), the FTP case its own FTP server, and the
Docker case reaches the engine through a TCP proxy it can cut (see test_docker_engine_fault).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.fault_pipeline import FaultLine, Nodes
from tests.support.faults import (
    REPORT_FILE,
    MakeLine,
    PrivateBroker,
    RestartableFtp,
)
from tests.support.ledger import REPORT
from tests.support.services import (
    ROOT,
    Broker,
    Names,
)


@pytest.fixture(scope="module")
def _private_rabbit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateBroker]:
    broker = PrivateBroker(tmp_path_factory.mktemp("rabbitmq"))
    try:
        broker.start()
        yield broker
    finally:
        broker.shutdown()


@pytest.fixture
def private_broker(_private_rabbit: PrivateBroker) -> Iterator[PrivateBroker]:
    """The module's private RabbitMQ node, running again after each test that stopped it."""
    yield _private_rabbit
    _private_rabbit.ensure_running()


@pytest.fixture
def private_ftp(tmp_path: Path) -> Iterator[RestartableFtp]:
    root = tmp_path / "ftp-root"
    root.mkdir()
    ftp = RestartableFtp(root)
    ftp.start()
    try:
        yield ftp
    finally:
        ftp.stop()


@pytest.fixture
async def nodes(tmp_path: Path) -> AsyncIterator[Nodes]:
    started = Nodes(tmp_path)
    try:
        yield started
    finally:
        await started.stop_all()


@pytest.fixture
async def make_line(names: Names) -> AsyncIterator[MakeLine]:
    """`await make_line(broker, stages=(...), quorum=..., fallbacks=...)`: a declared
    pipeline, deleted at the end."""
    made: list[FaultLine] = []

    async def make(broker: Broker, stages: tuple[str, ...] = ("s1",), **options: Any) -> FaultLine:
        line = FaultLine(names, broker, stages, **options)
        await line.declare()
        made.append(line)
        return line

    try:
        yield make
    finally:
        for line in made:
            await line.delete()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Every case's accounting, in the normal pytest output and in .run/faults.txt."""
    if not REPORT:
        return
    terminalreporter.section("fault injection: where every task ended")
    for line in REPORT:
        terminalreporter.write_line(line)
    REPORT_FILE.parent.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    REPORT_FILE.write_text(f"# fault-injection accounting, {stamp}\n" + "\n".join(REPORT) + "\n")
    terminalreporter.write_line(f"(also in {REPORT_FILE.relative_to(ROOT)})")
