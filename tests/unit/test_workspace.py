"""Workspaces are private and always removed, in the background but never forgotten."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import pytest

from ulos_py import workspace as workspace_module
from ulos_py.file_work import SMALL_ENTRIES
from ulos_py.workspace import Cleaner, workspace

REAL_RMTREE = workspace_module.shutil.rmtree


def held_rmtree(release: threading.Event, only: str = "") -> Callable[[Path, bool], None]:
    """An rmtree that waits for `release` (for directories named `only`…): a slow disk."""

    def rmtree(path: Path, ignore_errors: bool = False) -> None:
        if path.name.startswith(only):
            release.wait(5)
        REAL_RMTREE(path, ignore_errors)

    return rmtree


async def test_two_tasks_with_one_id_get_separate_workspaces_and_both_are_removed(
    tmp_path: Path,
) -> None:
    cleaner = Cleaner()
    async with (
        workspace(tmp_path, "same/id", cleaner) as first,
        workspace(tmp_path, "same/id", cleaner) as second,
    ):
        assert first.root != second.root
        assert first.root.is_dir() and second.root.is_dir()
        first.archive.write_bytes(b"zip")
    await cleaner.drain()
    assert list(tmp_path.iterdir()) == []
    assert cleaner.pending == 0


async def test_a_failing_task_still_has_its_workspace_removed(tmp_path: Path) -> None:
    cleaner = Cleaner()

    async def failing_task() -> None:
        async with workspace(tmp_path, "t", cleaner) as space:
            (space.root / "a.txt").write_text("x")
            raise RuntimeError("executor blew up")

    with pytest.raises(RuntimeError):
        await failing_task()
    await cleaner.drain()
    assert list(tmp_path.iterdir()) == []


def fill(folder: Path) -> None:
    """More files than `file_work` does on the loop: the workspace is removed in a thread."""
    for n in range(SMALL_ENTRIES + 1):
        (folder / f"f{n}.txt").write_text("x")


async def test_a_small_workspace_is_removed_at_once_without_a_thread(tmp_path: Path) -> None:
    cleaner = Cleaner()
    with mock.patch.object(asyncio, "to_thread", side_effect=AssertionError("a thread hop")):
        async with workspace(tmp_path, "t", cleaner) as space:
            (space.root / "main.py").write_text("print(1)\n")
    assert list(tmp_path.iterdir()) == []
    assert cleaner.pending == 0


async def test_a_large_workspace_is_removed_without_waiting_for_the_disk(tmp_path: Path) -> None:
    """A big tree's deletion runs in a thread while the node goes on."""
    release = threading.Event()
    slow_rmtree = held_rmtree(release)
    cleaner = Cleaner()
    with mock.patch.object(workspace_module.shutil, "rmtree", slow_rmtree):
        async with workspace(tmp_path, "t", cleaner) as space:
            fill(space.root)
        assert cleaner.pending == 1  # the block is over, the removal is not
        assert len(list(tmp_path.iterdir())) == 1
        release.set()
        await cleaner.drain()
    assert list(tmp_path.iterdir()) == []


async def test_a_full_backlog_makes_the_next_task_wait(tmp_path: Path) -> None:
    """Past `backlog` pending removals, a slow disk slows tasks instead of piling up dirs."""
    release = threading.Event()
    slow_rmtree = held_rmtree(release)
    cleaner = Cleaner(backlog=1)
    with mock.patch.object(workspace_module.shutil, "rmtree", slow_rmtree):
        async with workspace(tmp_path, "first", cleaner) as space:
            fill(space.root)

        async def second() -> None:
            async with workspace(tmp_path, "second", cleaner) as space:
                fill(space.root)

        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.1)
        assert not waiting.done()  # held until the first removal finishes
        release.set()
        await asyncio.wait_for(waiting, 5)
        await cleaner.drain()
    assert list(tmp_path.iterdir()) == []


async def test_a_cancelled_wait_for_room_removes_the_workspace_at_once(tmp_path: Path) -> None:
    release = threading.Event()
    slow_rmtree = held_rmtree(release, only="task-first")
    cleaner = Cleaner(backlog=1)
    with mock.patch.object(workspace_module.shutil, "rmtree", slow_rmtree):
        async with workspace(tmp_path, "first", cleaner) as space:
            fill(space.root)

        async def second() -> None:
            async with workspace(tmp_path, "second", cleaner) as space:
                fill(space.root)

        waiting = asyncio.create_task(second())
        await asyncio.sleep(0.1)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert [p.name.startswith("task-first") for p in tmp_path.iterdir()] == [True]
        release.set()
        await cleaner.drain()
    assert list(tmp_path.iterdir()) == []
