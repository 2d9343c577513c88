"""Where a task's file work runs: on the event loop when it is small, in a thread otherwise.

A hop to a worker thread is not free in a Python process: the loop and the thread hand the
GIL to each other at every system call. Measured with 10 KB submissions of 20 files
(benchmarks/README.md, "file work"), running unpack, pack and removal in threads cost a node
about a quarter of its CPU per task, and a quarter of its throughput with two worker
processes on two cores. Work this small blocks the loop for a few milliseconds; anything
larger, which could block it for long, always goes to a thread.
"""

from __future__ import annotations

import asyncio
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ulos_py.archive import pack, tree_entries
from ulos_py.errors import ExecutionCrashed

SMALL_ENTRIES = 64
"""Files and folders: each costs a file system call or two (creation is the dear one)."""
SMALL_BYTES = 256 << 10
"""Bytes of zip, and bytes unpacked: bounds the deflate and copy work done inline."""

T = TypeVar("T")


def small_zip(archive: Path) -> bool:
    """A zip small on disk whose central directory promises few entries and few bytes.

    The promise binds: `zipfile` reads no more than an entry's declared size, and the
    unpacker counts what it writes. An unreadable zip is not small: the thread reports it.
    """
    try:
        if archive.stat().st_size > SMALL_BYTES:
            return False
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return False
    return len(infos) <= SMALL_ENTRIES and sum(i.file_size for i in infos) <= SMALL_BYTES


def small_tree(folder: Path) -> bool:
    """At most SMALL_ENTRIES entries and SMALL_BYTES of files; stops looking past either."""
    size = 0
    try:
        for count, (_, entry) in enumerate(tree_entries(folder), start=1):
            if entry.is_file(follow_symlinks=False):
                size += entry.stat(follow_symlinks=False).st_size
            if count > SMALL_ENTRIES or size > SMALL_BYTES:
                return False
    except OSError:
        return False
    return True


def pack_with_output(files: Path, output_file: Path, output: str, archive: Path) -> None:
    """Write the stage's output file among `files`, then zip them all into `archive`: one
    trip to a worker thread."""
    try:
        output_file.write_text(output, encoding="utf-8")
    except OSError as exc:  # e.g. the executor left a directory of that name
        raise ExecutionCrashed(f"cannot write the output file {output_file.name}: {exc}") from exc
    pack(files, archive)


async def run_file_work(small: bool, work: Callable[..., T], *args: object) -> T:
    """`work(*args)` right here when `small`, else in a worker thread."""
    if small:
        return work(*args)
    return await asyncio.to_thread(work, *args)
