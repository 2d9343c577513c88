"""Safe unpacking and packing of task zips.

Submissions are untrusted: an entry may try to escape the working directory, be a link, or
be a zip bomb. Everything is checked before the first byte is written, and the byte count
is enforced again while writing because headers can lie.
"""

from __future__ import annotations

import os
import stat
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from ulos_py.errors import UnsafeArchive

JUNK_DIRS = frozenset({"__MACOSX"})
JUNK_FILES = frozenset({".DS_Store"})
CHUNK = 1 << 16
SAMPLE = 1 << 16
INCOMPRESSIBLE = 0.95
"""A sample that deflates to more than this share of its size is stored as it is."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Bounds on what one submission may unpack to."""

    max_entries: int = 10_000
    max_total_bytes: int = 1 << 30


def _entry_parts(info: zipfile.ZipInfo) -> tuple[str, ...]:
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if path.is_absolute() or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchive(f"entry {info.filename!r} is an absolute path")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if ".." in parts:
        raise UnsafeArchive(f"entry {info.filename!r} escapes the working directory")
    file_type = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool stored none
    if file_type not in (0, stat.S_IFREG, stat.S_IFDIR):
        raise UnsafeArchive(f"entry {info.filename!r} is a link or special file")
    return parts


def _is_junk(parts: tuple[str, ...]) -> bool:
    return bool(parts) and (parts[0] in JUNK_DIRS or parts[-1] in JUNK_FILES)


Entry = tuple[zipfile.ZipInfo, tuple[str, ...]]


def checked_entries(zf: zipfile.ZipFile, limits: ArchiveLimits) -> list[Entry]:
    """Checked entries with their relative parts, junk dropped, one wrapping folder stripped."""
    infos = zf.infolist()
    if len(infos) > limits.max_entries:
        raise UnsafeArchive(f"{len(infos)} entries, over the limit of {limits.max_entries}")
    total = sum(info.file_size for info in infos)
    if total > limits.max_total_bytes:
        raise UnsafeArchive(f"unpacks to {total} bytes, over the limit of {limits.max_total_bytes}")
    entries = [(info, parts) for info in infos if (parts := _entry_parts(info))]
    entries = [(info, parts) for info, parts in entries if not _is_junk(parts)]
    tops = {parts[0] for _, parts in entries}
    wrapped = len(tops) == 1 and all(len(parts) > 1 or info.is_dir() for info, parts in entries)
    if wrapped:
        entries = [(info, parts[1:]) for info, parts in entries if len(parts) > 1]
    return entries


def safe_unpack(archive: Path, dest: Path, limits: ArchiveLimits) -> None:
    """Unpack `archive` into `dest`, or raise UnsafeArchive having written nothing outside it."""
    try:
        with zipfile.ZipFile(archive) as zf:
            budget = limits.max_total_bytes
            made = {dest}  # a mkdir per entry is most of the cost of a small submission
            for info, parts in checked_entries(zf, limits):
                target = dest.joinpath(*parts)
                folder = target if info.is_dir() else target.parent
                if folder not in made:
                    folder.mkdir(parents=True, exist_ok=True)
                    made.add(folder)
                if info.is_dir():
                    continue
                with zf.open(info) as src, open(target, "xb") as out:
                    while chunk := src.read(CHUNK):
                        budget -= len(chunk)
                        if budget < 0:
                            raise UnsafeArchive("unpacked bytes exceed the size limit")
                        out.write(chunk)
                executable = (info.external_attr >> 16) & 0o111
                target.chmod(0o755 if executable else 0o644)
    except zipfile.BadZipFile as exc:
        raise UnsafeArchive(f"not a valid zip file: {exc}") from exc
    except FileExistsError as exc:
        raise UnsafeArchive(f"entry {exc.filename!r} appears twice") from exc
    except (OSError, EOFError, NotImplementedError, ValueError) as exc:
        raise UnsafeArchive(f"cannot unpack: {exc}") from exc


def pack(src: Path, archive: Path) -> None:
    """Zip the contents of `src` into `archive`; links and special files are not packed.

    A file dated before 1980, which a zip cannot hold (a container may leave one), is dated
    1980."""
    with zipfile.ZipFile(
        archive, "w", compression=zipfile.ZIP_DEFLATED, strict_timestamps=False
    ) as zf:
        for relative, entry in sorted(tree_entries(src), key=lambda item: item[0].split("/")):
            if entry.is_dir(follow_symlinks=False):
                zf.write(entry.path, relative + "/")
            else:
                zf.write(entry.path, relative, compress_type=_compression_for(entry))


def tree_entries(folder: Path | str, prefix: str = "") -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Directories and regular files below `folder`, with their names relative to it
    (links and special files are left out, and never followed).

    `scandir` knows each entry's type from the directory listing, where `rglob` plus
    `is_symlink`/`is_dir`/`is_file` made a system call per question per file.
    """
    with os.scandir(folder) as entries:
        for entry in entries:
            relative = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                yield relative, entry
                yield from tree_entries(entry.path, relative + "/")
            elif entry.is_file(follow_symlinks=False):
                yield relative, entry


def _compression_for(entry: os.DirEntry[str]) -> int:
    """Deflate, unless a large file's first block does not shrink (media, archives, data).

    Deflating incompressible bytes runs at about 30 MB/s and saves nothing, so a 100 MB
    submission of such files would spend seconds here for a zip of the same size.
    """
    if entry.stat(follow_symlinks=False).st_size <= SAMPLE:
        return zipfile.ZIP_DEFLATED
    with open(entry.path, "rb") as file:
        return compression_for_sample(file.read(SAMPLE))


def compression_for_sample(sample: bytes) -> int:
    """Deflate, unless the first block of a file does not shrink (see `_compression_for`)."""
    if len(sample) < SAMPLE:
        return zipfile.ZIP_DEFLATED
    squeezer = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, -15)
    squeezed = len(squeezer.compress(sample)) + len(squeezer.flush())
    return zipfile.ZIP_STORED if squeezed > INCOMPRESSIBLE * len(sample) else zipfile.ZIP_DEFLATED
