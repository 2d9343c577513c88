"""The README's main job (scripts/demo_pipeline.py, after scripts/demo's set-up): every
sample takes its expected path, and every process it started is gone afterwards, also
when it is interrupted with Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests.support.cli import ROOT

pytestmark = [pytest.mark.timeout(240), pytest.mark.usefixtures("executor_images", "broker")]

DEMO = [sys.executable, str(ROOT / "scripts" / "demo_pipeline.py")]


def started_pids(output: str) -> list[int]:
    return [int(pid) for pid in re.findall(r": pid (\d+)", output)]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes; /proc says which
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split()[2] != "Z"


def test_demo_runs_every_sample_to_its_expected_end() -> None:
    done = subprocess.run(DEMO, cwd=ROOT, capture_output=True, text=True, timeout=230)

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert re.search(r"(\d+) of \1 tasks took their expected path", done.stdout)
    assert "tracker at http://127.0.0.1:8400" in done.stdout
    assert "the tracker's journeys agree with the notices followed here" in done.stdout
    pids = started_pids(done.stdout)
    assert len(pids) == 9
    assert not [pid for pid in pids if alive(pid)]


def test_ctrl_c_stops_every_process_it_started() -> None:
    demo = subprocess.Popen(
        DEMO, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert demo.stdout is not None
    seen = ""
    deadline = time.monotonic() + 120
    while "following the notices" not in seen and time.monotonic() < deadline:
        line = demo.stdout.readline()
        if not line:
            break
        seen += line
    demo.send_signal(signal.SIGINT)
    rest, _ = demo.communicate(timeout=90)
    seen += rest

    assert demo.returncode == 130, seen[-3000:]
    assert "stopping every process this run started" in seen
    pids = started_pids(seen)
    assert len(pids) == 9
    assert not [pid for pid in pids if alive(pid)]
    assert "Traceback" not in seen
