"""The tracker runs on the event loop ULOS_EVENT_LOOP names, uvloop unless told otherwise,
as a node does (its loop is a share of every notice's CPU)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from ulos_py.node import run_event_loop
from ulos_py.tracker.settings import TrackerSettings


@pytest.mark.parametrize(
    ("env", "on_uvloop"), [({}, True), ({"ULOS_EVENT_LOOP": "asyncio"}, False)]
)
def test_the_tracker_runs_on_the_loop_its_settings_name(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], on_uvloop: bool
) -> None:
    monkeypatch.setenv("ULOS_TRACKER_QUEUE", "tracker")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    run_event_loop(main(), TrackerSettings())  # type: ignore[call-arg]
    assert isinstance(seen[0], uvloop.Loop) is on_uvloop
