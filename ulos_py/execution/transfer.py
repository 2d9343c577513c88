"""Tar streams between a task directory and a container, with no shared file system.

Files go in owned by the container's user, so a non-root submission can write its results;
they come back owned by the node, readable and deletable, whatever modes the container set.
What comes back is as untrusted as the submission: paths, links and sizes are checked.
"""

from __future__ import annotations

import tarfile
import tempfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from ulos_py.archive import ArchiveLimits
from ulos_py.errors import ExecutionCrashed

TAR_BLOCK = 512


def pack_for_container(workdir: Path, mount: PurePosixPath, owner: tuple[int, int]) -> BinaryIO:
    """`workdir` as a tar to put at `mount.parent`, every entry owned by `owner` (uid, gid)."""
    uid, gid = owner

    def owned(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid, info.gid, info.uname, info.gname = uid, gid, "", ""
        return info

    stream = spool()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(workdir, arcname=mount.name, recursive=True, filter=owned)
    stream.seek(0)
    return stream


def stream_limit(limits: ArchiveLimits) -> int:
    """How many tar bytes may come back: the content limit plus header and padding room."""
    return limits.max_total_bytes + (limits.max_entries + 2) * 3 * TAR_BLOCK


def unpack_from_container(stream: BinaryIO, workdir: Path, limits: ArchiveLimits) -> list[str]:
    """Extract the mount directory's tar into `workdir`; return the entries left out.

    Only regular files and directories come back: links and special files are left out
    (and named), since a link made in the container means nothing on the node.
    """
    kept: list[tarfile.TarInfo] = []
    left_out: list[str] = []
    total = 0
    with tarfile.open(fileobj=stream, mode="r:") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts[1:]  # drop the mount directory itself
            if not parts:
                continue
            relative = "/".join(parts)
            if not (member.isfile() or member.isdir()):
                left_out.append(relative)
                continue
            total += member.size
            if len(kept) >= limits.max_entries or total > limits.max_total_bytes:
                raise ExecutionCrashed(
                    f"the container left more than {limits.max_entries} entries or "
                    f"{limits.max_total_bytes} bytes in its task directory"
                )
            kept.append(member.replace(name=relative, deep=False))
        try:
            tar.extractall(workdir, members=kept, filter="data")
        except tarfile.FilterError as exc:
            raise ExecutionCrashed(f"the container left an unsafe entry: {exc}") from exc
    return left_out


def spool() -> BinaryIO:
    """A scratch file for a tar: small ones stay in memory, large ones go to disk."""
    return tempfile.SpooledTemporaryFile(max_size=8 << 20)  # type: ignore[return-value]
