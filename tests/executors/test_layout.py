"""Conventions every shipped executor folder keeps, so the node and the layer cache rely on them."""

from __future__ import annotations

import pytest

from tests.support.executors import EXECUTOR_NAMES, EXECUTORS, load_settings

SHARED_PREFIX = "\n".join(
    [
        "ARG BASE_IMAGE=ulos-py-base:bookworm",
        "FROM ${BASE_IMAGE}",
        "RUN apt-get update \\",
        "    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends"
        " python3 python3-pytest \\",
        "    && rm -rf /var/lib/apt/lists/*",
        "RUN groupadd --gid 10001 runner"
        " && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /tmp runner",
        "ENV PYTHONDONTWRITEBYTECODE=1 HOME=/tmp",
        "",
    ]
)


@pytest.mark.parametrize("name", EXECUTOR_NAMES)
def test_dockerfile_starts_with_the_shared_layers(name: str) -> None:
    dockerfile = (EXECUTORS / name / "Dockerfile").read_text()

    assert dockerfile.startswith(SHARED_PREFIX)
    assert "USER 10001:10001" in dockerfile
    assert f'CMD ["python3", "/opt/{name}/' in dockerfile


@pytest.mark.parametrize("name", EXECUTOR_NAMES)
def test_settings_fit_the_node_schema_and_explain_each_key(name: str) -> None:
    text = (EXECUTORS / name / "executor.toml").read_text()
    spec = load_settings(name)  # the node's own strict reading

    assert spec.settings.image == f"ulos-py/{name}"
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line and not line.startswith(("#", "[")):
            assert index > 0
            assert lines[index - 1].startswith("#"), f"no comment above {line!r}"


@pytest.mark.parametrize("name", EXECUTOR_NAMES)
def test_examples_are_folders_that_pass_and_fail(name: str) -> None:
    examples = list((EXECUTORS / name / "examples").iterdir())

    assert all(e.is_dir() for e in examples), "examples are source folders, never zips"
    assert sum(e.name.startswith("pass-") for e in examples) >= 1
    assert sum(e.name.startswith("fail-") for e in examples) >= 2
    assert all(e.name.startswith(("pass-", "fail-")) for e in examples)
    assert (EXECUTORS / name / "README.md").is_file()
