"""ulos_py.adapters.docker_images against the real engine: what a failed build raises."""

from __future__ import annotations

from pathlib import Path

import pytest

from ulos_py.adapters.docker_images import DockerImages
from ulos_py.errors import ImageBuildFailed, TaskCrash
from ulos_py.execution.images import choose_base

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("executor_images")]


@pytest.mark.parametrize(
    ("dockerfile", "reason"),
    [
        ("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN exit 3\n", "returned a non-zero code: 3"),
        ("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCOPY missing.txt /\n", "missing.txt"),
    ],
)
def test_a_build_that_fails_is_a_build_error_not_a_task_crash(
    tmp_path: Path, dockerfile: str, reason: str
) -> None:
    (tmp_path / "Dockerfile").write_text(dockerfile)
    images = DockerImages()
    try:
        base = choose_base(images, None, lambda _: None)
        with pytest.raises(ImageBuildFailed) as raised:
            images.build(tmp_path, "ulos-py-test/broken", {"BASE_IMAGE": base}, lambda _: None)
    finally:
        images.close()

    assert not isinstance(raised.value, TaskCrash)
    assert str(raised.value).startswith(f"building ulos-py-test/broken from {tmp_path}")
    assert reason in str(raised.value)
