"""`ulos-py executors list|build` as an operator runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.cli import ROOT

pytestmark = [pytest.mark.timeout(300), pytest.mark.usefixtures("executor_images")]


def ulos(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ulos_py", "executors", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=280,
    )


def test_list_shows_every_executor_with_its_stages_and_sandbox() -> None:
    listed = ulos("list")

    assert listed.returncode == 0, listed.stderr
    for name in ("python-check", "pytest-grader", "gcode-check"):
        assert f"{name}  docker  stages: {name}" in listed.stdout
        assert f"image ulos-py/{name} (built)" in listed.stdout
    assert "rule marker:results/PASSED" in listed.stdout
    assert "no network, memory 256m" in listed.stdout
    assert "pass  builtin  stages: pass, testing-*" in listed.stdout


def test_build_again_is_quick_and_says_which_base() -> None:
    built = ulos("build", "gcode-check")

    assert built.returncode == 0, built.stderr
    assert "base image: " in built.stdout
    assert built.stdout.strip().endswith("ulos-py/gcode-check")


def test_build_of_an_unknown_executor_is_a_usage_error() -> None:
    built = ulos("build", "no-such-check")

    assert built.returncode == 2
    assert "no-such-check" in built.stderr
    assert "python-check" in built.stderr  # says which ones exist


def test_an_engine_that_does_not_answer_gives_one_line() -> None:
    built = ulos("build", DOCKER_HOST="tcp://127.0.0.1:9")
    listed = ulos("list", DOCKER_HOST="tcp://127.0.0.1:9")

    assert built.returncode == 1
    assert "Traceback" not in built.stderr
    assert len(built.stderr.strip().splitlines()) == 1
    assert "Docker engine at tcp://127.0.0.1:9 does not answer" in built.stderr
    assert listed.returncode == 0
    assert "engine not answering" in listed.stdout


def test_a_failed_image_build_is_reported_as_a_build_error_on_one_line(tmp_path: Path) -> None:
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN exit 3\n")
    (folder / "executor.toml").write_text('image = "ulos-py-test/broken"\n')
    registry = tmp_path / "registry.toml"
    registry.write_text(
        '[[route]]\nstage = "broken"\nexecutor = "broken"\n\n'
        '[executor.broken]\nkind = "docker"\nfolder = "broken"\n'
    )

    built = ulos("build", "--registry", str(registry))

    assert built.returncode == 1
    assert "Traceback" not in built.stderr
    [line] = built.stderr.strip().splitlines()
    assert f"executors build: building ulos-py-test/broken from {folder} failed: " in line
    assert line.endswith("returned a non-zero code: 3")
