"""One private working directory per delivery, removed on every way out.

The directory name comes from a fresh temp name, never from the file path, so two tasks
with the same `filePath` on one node cannot touch each other's files.
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


@dataclass(frozen=True)
class Workspace:
    """Where one delivery's zip and unpacked files live."""

    root: Path

    @property
    def archive(self) -> Path:
        """The task's zip as downloaded, later the zip to upload."""
        return self.root / "task.zip"

    @property
    def files(self) -> Path:
        """The unpacked submission that the executor works in."""
        return self.root / "files"


def _create(parent: Path, task_id: str) -> Workspace:
    parent.mkdir(parents=True, exist_ok=True)
    label = re.sub(r"[^A-Za-z0-9_.-]", "_", task_id)[:40]
    space = Workspace(Path(tempfile.mkdtemp(prefix=f"task-{label}-", dir=parent)))
    space.files.mkdir()
    return space


@asynccontextmanager
async def workspace(parent: Path, task_id: str) -> AsyncIterator[Workspace]:
    """A new empty workspace under `parent`, removed when the block ends, whatever happens."""
    space = _create(parent, task_id)
    root = space.root
    try:
        yield space
    finally:
        try:
            await asyncio.to_thread(shutil.rmtree, root, True)
        except asyncio.CancelledError:
            shutil.rmtree(root, ignore_errors=True)
            raise
