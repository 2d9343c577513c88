"""One private working directory per delivery, removed on every way out.

The directory name comes from a fresh temp name, never from the file path, so two tasks
with the same `filePath` on one node cannot touch each other's files.

A workspace is removed after its delivery is settled (`lifecycle.process`), so the ack never
waits for the disk: a small one at once, on the loop (see `ulos_py.file_work`), a large one
in the background (`Cleaner`). The node drains the cleaner before it exits, so nothing is
left behind on a graceful stop.
"""

from __future__ import annotations

import asyncio
import re
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from ulos_py.file_work import small_tree
from ulos_py.task_files import WorkspaceFiles


@dataclass(frozen=True)
class Workspace:
    """Where one delivery's zip lives, and its files if an executor needs them unpacked."""

    root: Path
    files: WorkspaceFiles

    @property
    def archive(self) -> Path:
        """The task's zip as downloaded."""
        return self.files.downloaded


class Cleaner:
    """Removes finished workspaces: small ones at once, large ones in worker threads while
    tasks go on.

    At most `backlog` removals wait at once; past that a task waits for one to finish, so a
    slow disk slows the node down instead of filling up with old workspaces.
    """

    def __init__(self, backlog: int = 8) -> None:
        self._room = asyncio.Semaphore(backlog)
        self._removals: set[asyncio.Task[None]] = set()

    async def remove(self, root: Path) -> None:
        """Remove `root`, or start removing it; done or under way when this returns."""
        if small_tree(root):
            shutil.rmtree(root, ignore_errors=True)
            return
        try:
            await self._room.acquire()
        except asyncio.CancelledError:
            shutil.rmtree(root, ignore_errors=True)
            raise
        removal = asyncio.create_task(self._remove(root))
        self._removals.add(removal)
        removal.add_done_callback(self._removals.discard)

    async def _remove(self, root: Path) -> None:
        try:
            await asyncio.to_thread(shutil.rmtree, root, True)
        finally:
            self._room.release()

    @property
    def pending(self) -> int:
        return len(self._removals)

    async def drain(self) -> None:
        """Wait for every removal started so far (shutdown, tests)."""
        while self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)


def _create(parent: Path, task_id: str) -> Workspace:
    parent.mkdir(parents=True, exist_ok=True)
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", task_id)[:40]
    root = Path(tempfile.mkdtemp(prefix=f"task-{label}-", dir=parent))
    return Workspace(root, WorkspaceFiles(root))


@asynccontextmanager
async def workspace(parent: Path, task_id: str, cleaner: Cleaner) -> AsyncIterator[Workspace]:
    """A new empty workspace under `parent`, handed to `cleaner` when the block ends,
    whatever happens."""
    space = _create(parent, task_id)
    try:
        yield space
    finally:
        await cleaner.remove(space.root)
