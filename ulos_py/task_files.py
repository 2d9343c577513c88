"""A task's files as its executor takes them: the zip as it came, a tar stream, or a tree.

Writing every submission to disk as a tree and reading it back was most of a node's file
work, and most executors never look at the tree. So the zip is checked where it lies
(`zip_stream.check_zip`); an executor asks for the form it needs:

- nothing (the built-in ones): the stage's output is appended to the zip in place (or,
  when names change, uploaded with the entries straight from it: `zip_stream.ZipPlan`);
- a tar stream (docker): made from the zip's entries, and the container's tar becomes the
  new zip;
- a directory (`directory()`): unpacked once under the workspace, packed again at the end.

Small work runs on the event loop, larger work in a thread (see `ulos_py.file_work`).
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ulos_py.archive import ArchiveLimits, safe_unpack
from ulos_py.errors import ExecutionCrashed
from ulos_py.execution.transfer import pack_for_container, spool, unpack_from_container
from ulos_py.file_work import SMALL_BYTES, pack_with_output, run_file_work, small_tree, small_zip
from ulos_py.zip_scan import ZipScan
from ulos_py.zip_stream import (
    TarResults,
    ZipContents,
    ZipPlan,
    append_file,
    check_zip,
    list_zip,
    plan_rewrite,
    tar_to_zip,
    zip_to_tar,
)


class WorkspaceFiles:
    """One delivery's submission under its workspace `root` (see `ulos_py.workspace`)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._zip = self.downloaded
        self._contents: ZipContents | None = None
        self._limits = ArchiveLimits()
        self._tree: Path | None = None
        self._scan: ZipScan | None = None

    @property
    def downloaded(self) -> Path:
        """Where the task's zip is downloaded to."""
        return self.root / "task.zip"

    def scan(self, limits: ArchiveLimits) -> ZipScan:
        """A reader of the download that checks entries as they come (see `zip_scan`), so
        that `check` reads only what it could not follow."""
        self._scan = ZipScan(limits)
        return self._scan

    async def check(self, limits: ArchiveLimits) -> None:
        """Check the downloaded zip (SPEC §3); raise UnsafeArchive. Nothing is unpacked."""
        self._limits = limits
        small = small_zip(self._zip)
        self._contents = await run_file_work(small, check_zip, self._zip, limits, self._scan)

    async def directory(self) -> Path:
        """The submission unpacked to a folder the executor may change; what it leaves there
        is what gets packed."""
        if self._tree is None:
            tree = self.root / "files"
            tree.mkdir()
            await run_file_work(small_zip(self._zip), safe_unpack, self._zip, tree, self._limits)
            self._tree = tree
        return self._tree

    async def tar_for(self, mount: PurePosixPath, owner: tuple[int, int]) -> BinaryIO:
        """The files as a tar of the folder `mount.name`, owned by `owner` (uid, gid)."""
        if self._tree is not None:
            return await asyncio.to_thread(pack_for_container, self._tree, mount, owner)
        stream = spool()
        try:
            small = small_zip(self._zip)
            await run_file_work(
                small, zip_to_tar, self._zip, stream, self._limits, mount.name, owner
            )
        except BaseException:
            stream.close()
            raise
        stream.seek(0)
        return stream

    async def take_tar(self, stream: BinaryIO, marker: PurePosixPath | None) -> TarResults:
        """The task's files become the tar a container left (its folder's contents), less
        `marker`, whose presence as a file is reported. Raises ExecutionCrashed."""
        if self._tree is not None:
            return await asyncio.to_thread(_replace_tree, self._tree, stream, self._limits, marker)
        results = self.root / "results.zip"
        taken = await asyncio.to_thread(tar_to_zip, stream, results, self._limits, marker)
        self._zip = results
        self._contents = await asyncio.to_thread(list_zip, results, self._limits)
        return taken

    async def seal(self, output_name: str, output: str) -> Path | ZipPlan:
        """Add the stage's output file; return the zip to upload: a file, or, when the
        entries must be renamed or one left out, a plan that uploads them from the zip as
        downloaded (no second copy of the archive on disk)."""
        if self._tree is not None:
            upload = self.root / "upload.zip"
            small = len(output) <= SMALL_BYTES and small_tree(self._tree)
            await run_file_work(
                small, pack_with_output, self._tree, self._tree / output_name, output, upload
            )
            return upload
        contents = self._contents
        if contents is None:
            raise RuntimeError("seal() before check()")
        if output_name in contents.folders:
            raise ExecutionCrashed(f"cannot write the output file {output_name}: it is a folder")
        data = output.encode("utf-8")
        if not contents.as_stored or output_name in contents.files:
            return await run_file_work(
                small_zip(self._zip),
                plan_rewrite,
                self._zip,
                self._limits,
                output_name,
                output_name,
                data,
            )
        await run_file_work(len(data) <= SMALL_BYTES, append_file, self._zip, output_name, data)
        return self._zip


def _replace_tree(
    tree: Path, stream: BinaryIO, limits: ArchiveLimits, marker: PurePosixPath | None
) -> TarResults:
    """The folder becomes what the container left: deletions included."""
    shutil.rmtree(tree)
    tree.mkdir()
    left_out = unpack_from_container(stream, tree, limits)
    found = False
    if marker is not None and (tree / marker).is_file():
        (tree / marker).unlink()
        found = True
    return TarResults(left_out, found)
