"""A zip read entry by entry while it downloads, so checking it needs no second pass.

A zip's central directory comes last, so the check (`zip_stream.check_zip`) cannot start
before the download ends, and then it reads the whole file again to inflate every entry and
check its CRC. `ZipScan` does that reading on the blocks as they arrive instead (in the
download's writer thread): it follows the local headers in order and records, for each
entry, what inflating it gave. The check then trusts a record only where it says exactly
what `zipfile` would find, reading from the central directory (same offset, method, sizes,
CRC, name, no encryption); every other entry is read as before. The scan decides nothing
itself: an entry it could not follow, or that does not match, is simply read again.

Work is bounded: the scan stops (and leaves everything to the check) past `max_entries`
entries, or when inflating would give far more bytes than came down (a zip bomb costs it no
more than a normal zip of its size).
"""

from __future__ import annotations

import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from ulos_py.archive import ArchiveLimits

LOCAL_HEADER = b"PK\x03\x04"
HEADER = struct.Struct("<4sHHHHHIIIHH")
"""Signature, version, flags, method, time, date, CRC, compressed and file size, name and
extra field lengths."""
PLAIN_FLAGS = 0x0800 | 0x0006
"""UTF-8 names and deflate's speed hints; anything else (encryption, sizes after the data)
is left to the check."""
UNSAFE_FLAGS = 0x0001 | 0x0020 | 0x0040
"""Encrypted, patched or strongly encrypted, as zipfile tests them in the directory."""
METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
MAX_HEADER = HEADER.size + 2 * 0xFFFF
"""A local header with the longest name and extra field."""
SLICE = 64 << 10
"""Bytes inflated at a time."""
RATIO = 16
SLACK = 16 << 20
"""The scan inflates at most RATIO bytes per byte received, plus SLACK."""


@dataclass(frozen=True)
class Scanned:
    """What one entry's bytes gave."""

    name: str
    end: int
    """Where its compressed bytes end."""
    method: int
    compress_size: int
    file_size: int
    crc: int


class ZipScan:
    """Fed the zip's bytes in order (`feed`), from one thread at a time."""

    def __init__(self, limits: ArchiveLimits) -> None:
        self._max_entries = limits.max_entries
        self._entries: dict[int, Scanned] = {}
        self.start()

    def start(self) -> None:
        """From the first byte (again: a retried download)."""
        self._entries.clear()
        self._buffer = bytearray()
        self._offset = 0
        """Where the next local header starts."""
        self._received = 0
        self._inflated = 0
        self._entry: _Entry | None = None
        self.stopped = False

    def feed(self, block: bytes | bytearray) -> None:
        if self.stopped:
            return
        self._received += len(block)
        try:
            self._take(memoryview(block))
        except Exception:  # whatever a zip does to the scan, the check reads it itself
            self.stop()

    def stop(self) -> None:
        """Follow no further (the check reads what is left)."""
        self.stopped = True
        self._entry = None
        self._buffer = bytearray()

    def covers(self, info: zipfile.ZipInfo, next_offset: int) -> bool:
        """Whether reading `info` as zipfile would gives nothing the scan has not seen: the
        same bytes inflated by the same method to its size and CRC. `next_offset` is where
        the directory's next entry (or the directory) starts: an entry overlapping another
        is read again, whatever the scan saw."""
        seen = self._entries.get(info.header_offset)
        return (
            seen is not None
            and seen.end <= next_offset
            and not info.flag_bits & UNSAFE_FLAGS
            and seen.name == info.orig_filename
            and seen.method == info.compress_type
            and seen.compress_size == info.compress_size
            and seen.file_size == info.file_size
            and seen.crc == info.CRC
        )

    def _take(self, data: memoryview) -> None:
        while data or (self._entry is not None and self._entry.done):
            if self._entry is not None:
                data = self._entry.take(data)
                self._inflated += self._entry.inflated_last
                if self._inflated > RATIO * self._received + SLACK:
                    raise _Stop
                if self._entry.done:
                    self._entries[self._entry.offset] = self._entry.result()
                    self._offset = self._entry.end
                    self._entry = None
            elif self._buffer:  # a header split between two blocks
                before = len(self._buffer)
                self._buffer += data[:MAX_HEADER]
                used = self._header(self._buffer)
                if used is None:
                    if len(self._buffer) >= MAX_HEADER:
                        raise _Stop
                    return
                data = data[used - before :]
                self._buffer = bytearray()
            else:
                used = self._header(data)
                if used is None:
                    self._buffer += data
                    return
                data = data[used:]

    def _header(self, view: bytes | bytearray | memoryview) -> int | None:
        """Parse the local header at the start of `view`; return the bytes it takes (None:
        not all there yet)."""
        if len(view) < HEADER.size:
            return None
        fields = HEADER.unpack_from(view)
        signature, _, flags, method, _, _, _, compressed, size, name_len, extra_len = fields
        if signature != LOCAL_HEADER:
            raise _Stop  # the central directory, or something the check will look at
        used: int = HEADER.size + name_len + extra_len
        if len(view) < used:
            return None
        if (
            flags & ~PLAIN_FLAGS
            or method not in METHODS
            or 0xFFFFFFFF in (compressed, size)
            or len(self._entries) >= self._max_entries
        ):
            raise _Stop
        raw = bytes(view[HEADER.size : HEADER.size + name_len])
        name = raw.decode("utf-8") if flags & 0x0800 else raw.decode("cp437")
        self._entry = _Entry(self._offset, self._offset + used, name, method, compressed, size)
        return used


class _Stop(Exception):
    """The scan cannot follow this zip further."""


class _Entry:
    """One entry's compressed bytes as they come: inflated (at most to its declared size,
    as zipfile reads) and their CRC taken."""

    def __init__(
        self, offset: int, data_start: int, name: str, method: int, compressed: int, size: int
    ) -> None:
        self.offset = offset
        self.end = data_start + compressed
        self._name, self._method, self._size = name, method, size
        self._compressed = compressed
        self._left = compressed
        self._inflater = zlib.decompressobj(-15) if method == zipfile.ZIP_DEFLATED else None
        self._crc = 0
        self._produced = 0
        self.inflated_last = 0

    @property
    def done(self) -> bool:
        return self._left == 0

    def take(self, data: memoryview) -> memoryview:
        """Consume what belongs to this entry; return the rest."""
        mine, rest = data[: self._left], data[self._left :]
        self._left -= len(mine)
        before = self._produced
        if self._inflater is None:
            self._count(mine[: self._size - self._produced])
        else:
            for start in range(0, len(mine), SLICE):
                self._inflate(self._inflater, mine[start : start + SLICE])
        self.inflated_last = self._produced - before
        return rest

    def _inflate(self, inflater: Any, data: memoryview | bytes) -> None:
        """Inflate in slices: the output is only counted, and small pieces keep the
        allocator from holding on to MiB blocks in every worker thread that ran a scan."""
        while data and self._produced < self._size and not inflater.eof:
            # past the declared size zipfile stops reading too
            self._count(inflater.decompress(data, min(self._size - self._produced, SLICE)))
            data = inflater.unconsumed_tail

    def _count(self, out: bytes | memoryview) -> None:
        self._crc = zlib.crc32(out, self._crc)
        self._produced += len(out)

    def result(self) -> Scanned:
        return Scanned(
            self._name, self.end, self._method, self._compressed, self._produced, self._crc
        )
