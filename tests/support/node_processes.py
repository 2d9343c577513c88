"""Starting whole `ulos-py node` processes on the sample topology and following what
arrives, for the end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.support.cli import settings_env
from tests.support.harness import Pipeline, make_zip, node_values, stage, task
from tests.support.services import Broker, FtpServer, Names


def slow_registry(tmp_path: Path, seconds: float) -> Path:
    path = tmp_path / "registry.toml"
    path.write_text(
        '[[route]]\nstage = "work"\nexecutor = "work"\n\n'
        f'[executor.work]\nkind = "builtin"\nbehaviour = "pass"\ndelay_seconds = {seconds}\n'
    )
    return path


def node_env(
    names: Names, broker: Broker, ftp: FtpServer, tmp_path: Path, seconds: float, **extra: object
) -> dict[str, str]:
    values = node_values(
        names,
        broker,
        ftp,
        tmp_path / "work",
        MESSAGE_BROKER_PREFETCH_COUNT=1,
        ULOS_EXECUTORS_FILE=slow_registry(tmp_path, seconds),
        **extra,
    )
    return settings_env(values)


async def publish_tasks(line: Pipeline, names: Names, ftp: FtpServer, count: int) -> list[str]:
    path = f"/{names.prefix}/s.zip"
    ftp.put(path, make_zip({"main.py": "print(1)\n"}))
    tree = stage(names.exchange, "work", success=stage(names.exchange, "next-key"))
    ids = [f"t{n:02d}" for n in range(count)]
    for task_id in ids:
        await line.publish(task(task_id, path, tree))
    return ids


async def arrivals(line: Pipeline, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    return [await line.next_json("next", timeout=timeout) for _ in range(count)]
