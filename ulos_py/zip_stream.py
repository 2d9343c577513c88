"""A task's zip worked on as a stream: checked, added to, turned into a tar and back.

An executor that never looks at the files (the built-in ones) gets no unpacked tree: the
zip is checked entry by entry, and the stage's output is appended to it in place. When the
names must change (a wrapping folder or junk stripped, an earlier output replaced), the new
zip is a plan: its headers made here, its entries' bytes read from the downloaded zip as it
is uploaded, so the archive is neither written to disk a second time nor held in memory. A docker
executor gets a tar stream made from the zip's entries, and the tar its container leaves
becomes the new zip, again without a tree on disk.

Every check of `archive.safe_unpack` holds on the stream (SPEC §3): path escapes, links and
special files, entry and size limits, a header that lies about its size (every entry is
read and its CRC checked, never more than its declared size), names given twice.
"""

from __future__ import annotations

import shutil
import struct
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, BinaryIO

from ulos_py.archive import (
    CHUNK,
    SAMPLE,
    ArchiveLimits,
    Entry,
    checked_entries,
    compression_for_sample,
)
from ulos_py.errors import ExecutionCrashed, UnsafeArchive
from ulos_py.zip_scan import HEADER, LOCAL_HEADER, ZipScan

EXECUTABLE = 0o755
PLAIN = 0o644
EARLIEST = (1980, 1, 1, 0, 0, 0)
"""A zip cannot date an entry before 1980."""


@dataclass(frozen=True)
class ZipContents:
    """What a checked zip holds, by relative path (folders without their slash)."""

    files: frozenset[str]
    folders: frozenset[str]
    as_stored: bool
    """True when every entry already has the name an unpacked tree would give it: no junk
    dropped, no wrapping folder stripped. Only then may the zip be added to in place."""


@dataclass(frozen=True)
class TarResults:
    """What came back from a container, once it is the task's zip again."""

    left_out: list[str]
    """Links and special files the container made: not kept, named in the output."""
    marker_found: bool
    """The success marker asked for was a file among the results (it is not kept)."""


def _open_zip(archive: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise UnsafeArchive(f"not a valid zip file: {exc}") from exc
    except (OSError, EOFError, ValueError) as exc:
        raise UnsafeArchive(f"cannot read the zip: {exc}") from exc


def _contents(entries: list[Entry], as_stored: bool) -> ZipContents:
    files: set[str] = set()
    folders: set[str] = set()
    for info, parts in entries:
        name = "/".join(parts)
        if info.is_dir():
            folders.add(name)
        elif name in files:
            raise UnsafeArchive(f"entry {info.filename!r} appears twice")
        else:
            files.add(name)
        folders.update("/".join(parts[:i]) for i in range(1, len(parts)))
    clash = files & folders
    if clash:
        raise UnsafeArchive(f"entry {min(clash)!r} is both a file and a folder")
    return ZipContents(frozenset(files), frozenset(folders), as_stored)


def check_zip(archive: Path, limits: ArchiveLimits, scan: ZipScan | None = None) -> ZipContents:
    """Check `archive` as `safe_unpack` would, reading every entry but writing nothing;
    raise UnsafeArchive. Entries a `scan` of the download already read are not read again."""
    return _examine(archive, limits, read=True, scan=scan)


def list_zip(archive: Path, limits: ArchiveLimits) -> ZipContents:
    """What a zip this node wrote holds, from its central directory alone."""
    return _examine(archive, limits, read=False)


def _examine(
    archive: Path, limits: ArchiveLimits, read: bool, scan: ZipScan | None = None
) -> ZipContents:
    with _open_zip(archive) as zf:
        try:
            entries = checked_entries(zf, limits)
            kept = {info.filename for info, _ in entries}
            as_stored = all(
                info.filename.rstrip("/") == "/".join(parts) for info, parts in entries
            ) and all(info.filename in kept for info in zf.infolist())
            contents = _contents(entries, as_stored)
            if not read:
                return contents
            budget = limits.max_total_bytes
            following = _next_offsets(zf) if scan is not None else {}
            for info, _ in entries:
                if scan is not None and scan.covers(info, following[info.header_offset]):
                    budget -= info.file_size  # what the scan inflated, no more
                    continue
                for chunk in _read(zf, info):
                    budget -= len(chunk)
                    if budget < 0:
                        raise UnsafeArchive("unpacked bytes exceed the size limit")
        except zipfile.BadZipFile as exc:
            raise UnsafeArchive(f"not a valid zip file: {exc}") from exc
        except (OSError, EOFError, NotImplementedError, ValueError, RuntimeError) as exc:
            raise UnsafeArchive(f"cannot unpack: {exc}") from exc
    return contents


def _next_offsets(zf: zipfile.ZipFile) -> dict[int, int]:
    """For each entry's offset, where the next entry (or the directory) starts; -1 for an
    offset two entries share, so neither counts as read by a scan."""
    offsets = sorted(info.header_offset for info in zf.infolist())
    following = {}
    for here, after in zip(offsets, [*offsets[1:], zf.start_dir], strict=True):
        following[here] = -1 if here in following or here == after else after
    return following


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
    """An entry's bytes; zipfile stops at its declared size and checks its CRC at the end."""
    if info.is_dir():
        return
    with zf.open(info) as src:
        while chunk := src.read(CHUNK):
            yield chunk


def append_file(archive: Path, name: str, data: bytes) -> None:
    """Add one file to a zip in place: its entries are not read or written again."""
    with zipfile.ZipFile(archive, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(_new_info(name, PLAIN), data)


def plan_rewrite(source: Path, limits: ArchiveLimits, drop: str, name: str, data: bytes) -> ZipPlan:
    """The zip to upload: `source` under the names an unpacked tree would have (junk and a
    wrapping folder gone), less `drop`, plus the file `name`. Each entry's compressed bytes
    stay where they are in `source` (checked by `check_zip` before): neither inflated and
    deflated again nor written to a second file; only headers are made here."""
    recorder = _Recorder()
    with _open_zip(source) as zf, zipfile.ZipFile(recorder, "w") as out:
        end = zf.start_dir
        for info, parts in checked_entries(zf, limits):
            entry_name = "/".join(parts)
            if entry_name == drop:
                continue
            if info.is_dir():
                out.writestr(_new_info(entry_name + "/", EXECUTABLE, info.date_time), b"")
            else:
                _refer_compressed(zf, info, out, recorder, entry_name, end)
        out.writestr(_new_info(name, PLAIN), data)
    return ZipPlan(source, recorder.parts())


def _refer_compressed(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    out: zipfile.ZipFile,
    recorder: _Recorder,
    name: str,
    end: int,
) -> None:
    """Add to `out` a local header for `info` under `name`, with its CRC and sizes, and a
    reference to its compressed bytes in the source. zipfile has no call for it: this writes
    the header with zipfile's own `FileHeader` and registers the entry as `ZipFile.write` does."""
    source = zf.fp
    if source is None:
        raise UnsafeArchive("the zip was closed while being read")
    source.seek(info.header_offset)
    local = source.read(HEADER.size)
    if len(local) < HEADER.size or local[:4] != LOCAL_HEADER:
        raise UnsafeArchive(f"entry {info.filename!r} has no valid local header")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    start = info.header_offset + HEADER.size + name_length + extra_length
    if start + info.compress_size > end:
        raise UnsafeArchive(f"entry {info.filename!r} is cut short")
    entry = _new_info(name, _mode_of(info), info.date_time, info.compress_type)
    entry.CRC, entry.compress_size, entry.file_size = info.CRC, info.compress_size, info.file_size
    zip64 = max(info.file_size, info.compress_size) > zipfile.ZIP64_LIMIT
    entry.header_offset = recorder.tell()
    recorder.write(entry.FileHeader(zip64))
    recorder.refer(start, info.compress_size)
    out.filelist.append(entry)
    out.NameToInfo[name] = entry
    out.start_dir = recorder.tell()


Part = bytes | tuple[int, int]
"""Bytes made for the new zip, or (offset, length): a range of the source zip."""


class _Recorder:
    """What zipfile writes of a new zip (headers, new entries, the central directory), kept
    as bytes, with references to the source's ranges in between: write-only, unseekable, so
    zipfile writes its entries with a data descriptor after them."""

    def __init__(self) -> None:
        self._parts: list[Part] = []
        self._made = bytearray()
        self._position = 0

    def write(self, data: bytes, /) -> int:
        self._made += data
        self._position += len(data)
        return len(data)

    def refer(self, offset: int, length: int) -> None:
        self._close_made()
        if length:
            self._parts.append((offset, length))
        self._position += length

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass

    def parts(self) -> tuple[Part, ...]:
        self._close_made()
        return tuple(self._parts)

    def _close_made(self) -> None:
        if self._made:
            self._parts.append(bytes(self._made))
            self._made = bytearray()


@dataclass(frozen=True)
class ZipPlan:
    """A zip made of another zip's bytes and a few new ones, read in order when uploaded:
    the new archive is never written to disk, and memory holds only its headers."""

    source: Path
    parts: tuple[Part, ...]

    @property
    def size(self) -> int:
        return sum(len(part) if isinstance(part, bytes) else part[1] for part in self.parts)

    def open(self) -> PlanReader:
        return PlanReader(self)

    def read_bytes(self) -> bytes:
        """The whole zip at once (tests, and small uploads)."""
        with self.open() as reader:
            return reader.read()


class PlanReader:
    """Reads a `ZipPlan` front to back like a file: the source's ranges from disk."""

    def __init__(self, plan: ZipPlan) -> None:
        self._parts = plan.parts
        self.size = plan.size
        self._file = plan.source.open("rb")
        self._index = 0
        self._offset = 0
        self._position = 0

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes (all that is left when negative); b"" only at the end."""
        want = self.size - self._position if size < 0 else size
        pieces: list[bytes] = []
        got = 0
        while got < want and self._index < len(self._parts):
            piece = self._next_piece(want - got)
            pieces.append(piece)
            got += len(piece)
        self._position += got
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def _next_piece(self, most: int) -> bytes:
        part = self._parts[self._index]
        if isinstance(part, bytes):
            piece, length = part[self._offset : self._offset + most], len(part)
        else:
            start, length = part
            self._file.seek(start + self._offset)
            piece = self._file.read(min(most, length - self._offset))
            if not piece:
                raise OSError(f"{self._file.name} is shorter than when it was checked")
        self._offset += len(piece)
        if self._offset == length:
            self._index, self._offset = self._index + 1, 0
        return piece

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> PlanReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def zip_to_tar(
    archive: Path,
    into: IO[bytes],
    limits: ArchiveLimits,
    top: str,
    owner: tuple[int, int],
) -> None:
    """Write the zip's entries as a tar of the folder `top`, every entry owned by `owner`.

    Folders the zip only implies get an entry of their own, so the container's user owns
    every folder of its task and can write there.
    """
    uid, gid = owner
    now = time.time()

    def header(name: str, mode: int, kind: bytes, size: int = 0) -> tarfile.TarInfo:
        info = tarfile.TarInfo(f"{top}/{name}" if name else top)
        info.type, info.mode, info.size, info.mtime = kind, mode, size, now
        info.uid, info.gid = uid, gid
        return info

    with (
        _open_zip(archive) as zf,
        tarfile.open(fileobj=into, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        try:
            tar.addfile(header("", EXECUTABLE, tarfile.DIRTYPE))
            made: set[str] = set()
            for info, parts in checked_entries(zf, limits):
                folders = parts if info.is_dir() else parts[:-1]
                for depth in range(1, len(folders) + 1):
                    folder = "/".join(folders[:depth])
                    if folder not in made:
                        made.add(folder)
                        tar.addfile(header(folder, EXECUTABLE, tarfile.DIRTYPE))
                if info.is_dir():
                    continue
                name = "/".join(parts)
                entry = header(name, _mode_of(info), tarfile.REGTYPE, info.file_size)
                with zf.open(info) as src:
                    tar.addfile(entry, src)
        except zipfile.BadZipFile as exc:
            raise UnsafeArchive(f"not a valid zip file: {exc}") from exc
        except (OSError, EOFError, NotImplementedError, ValueError) as exc:
            raise UnsafeArchive(f"cannot unpack: {exc}") from exc


def tar_to_zip(
    stream: BinaryIO, dest: Path, limits: ArchiveLimits, marker: PurePosixPath | None
) -> TarResults:
    """Turn the tar of a container's task folder into the task's zip, checking it as the
    untrusted thing it is: names that escape, links and special files (left out), and the
    entry and size limits. Raises ExecutionCrashed."""
    left_out: list[str] = []
    seen: set[str] = set()
    found = False
    total = 0
    try:
        with (
            tarfile.open(fileobj=stream, mode="r|") as tar,
            zipfile.ZipFile(dest, "w") as out,
        ):
            for member in tar:
                relative = _relative(member.name)
                if not relative:
                    continue
                if not (member.isfile() or member.isdir()):
                    left_out.append(relative)
                    continue
                if relative in seen:
                    raise ExecutionCrashed(f"the container left {relative!r} twice")
                seen.add(relative)
                total += member.size
                if len(seen) > limits.max_entries or total > limits.max_total_bytes:
                    raise ExecutionCrashed(
                        f"the container left more than {limits.max_entries} entries or "
                        f"{limits.max_total_bytes} bytes in its task directory"
                    )
                if member.isdir():
                    out.writestr(_new_info(relative + "/", EXECUTABLE, _date(member)), b"")
                elif marker is not None and relative == marker.as_posix():
                    found = True  # the marker is the executor's signal, not a result
                else:
                    _copy_member(tar, member, relative, out)
    except tarfile.TarError as exc:
        raise ExecutionCrashed(f"the container's files could not be read: {exc}") from exc
    return TarResults(left_out, found)


def _relative(name: str) -> str:
    """A tar member's path below the task folder ('' for the folder itself)."""
    path = PurePosixPath(name)
    parts = [p for p in path.parts[1:] if p not in ("", ".")]
    if path.is_absolute() or ".." in parts:
        raise ExecutionCrashed(f"the container left an unsafe entry: {name!r}")
    return "/".join(parts)


def _copy_member(
    tar: tarfile.TarFile, member: tarfile.TarInfo, relative: str, out: zipfile.ZipFile
) -> None:
    src = tar.extractfile(member)
    if src is None:  # pragma: no cover - a regular file always has a body
        raise ExecutionCrashed(f"the container's {relative!r} has no content")
    sample = src.read(SAMPLE)
    mode = EXECUTABLE if member.mode & 0o111 else PLAIN
    target = _new_info(relative, mode, _date(member), compression_for_sample(sample))
    with out.open(target, "w", force_zip64=True) as sink:
        sink.write(sample)
        shutil.copyfileobj(src, sink, CHUNK)


def _mode_of(info: zipfile.ZipInfo) -> int:
    return EXECUTABLE if (info.external_attr >> 16) & 0o111 else PLAIN


def _date(member: tarfile.TarInfo) -> tuple[int, int, int, int, int, int]:
    stamp = time.localtime(max(member.mtime, 0))[:6]
    return max(stamp, EARLIEST)


def _new_info(
    name: str,
    mode: int,
    date_time: tuple[int, int, int, int, int, int] | None = None,
    compress_type: int = zipfile.ZIP_DEFLATED,
) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name, date_time or time.localtime()[:6])
    kind = 0o040000 if name.endswith("/") else 0o100000
    info.external_attr = (kind | mode) << 16
    info.compress_type = zipfile.ZIP_STORED if name.endswith("/") else compress_type
    return info
