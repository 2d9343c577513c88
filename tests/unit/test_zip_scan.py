"""A zip checked on its way down: what a scan of the download read is not read again, and
anything it could not follow, or that does not match the directory, is read as before."""

from __future__ import annotations

import io
import random
import struct
import zipfile
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import pytest

from tests.support.fakes import zip_bytes
from ulos_py import zip_stream
from ulos_py.archive import ArchiveLimits
from ulos_py.errors import UnsafeArchive
from ulos_py.zip_scan import ZipScan
from ulos_py.zip_stream import check_zip


def feed(scan: ZipScan, data: bytes, block: int) -> ZipScan:
    scan.start()
    for start in range(0, len(data), block):
        scan.feed(data[start : start + block])
    return scan


def read_again(archive: Path, scan: ZipScan) -> list[str]:
    """The entries check_zip reads from the file after `scan` (it passes)."""
    names: list[str] = []
    real = zip_stream._read

    def reading(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> Iterator[bytes]:
        names.append(info.filename)
        return real(zf, info)

    with mock.patch.object(zip_stream, "_read", reading):
        check_zip(archive, ArchiveLimits(), scan)
    return names


def mixed_zip() -> bytes:
    blob = random.Random(1).randbytes(300_000)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("src/", b"")
        zf.writestr("src/main.py", "print('hi')\n" * 500)
        zf.writestr(zipfile.ZipInfo("data/stored.bin"), blob)  # stored
        zf.writestr("data/blob.bin", blob)
        zf.writestr("naïve/ünïcode.txt", "ü")
        zf.writestr("empty.txt", b"")
    return buffer.getvalue()


@pytest.mark.parametrize("block", [1, 7, 4096, 1 << 20])
def test_entries_read_on_the_way_down_are_not_read_again(tmp_path: Path, block: int) -> None:
    data = mixed_zip()
    archive = tmp_path / "t.zip"
    archive.write_bytes(data)

    scan = feed(ZipScan(ArchiveLimits()), data, block)

    assert read_again(archive, scan) == []


def test_an_entry_with_its_sizes_after_the_data_is_read_again(tmp_path: Path) -> None:
    """A zip written as a stream (sizes in a data descriptor): the scan cannot know where the
    entry ends, so it stops and the check reads the rest."""
    sink = _Unseekable()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("a.txt", "w") as entry:
        entry.write(b"streamed " * 100)
    archive = tmp_path / "t.zip"
    archive.write_bytes(sink.data)

    scan = feed(ZipScan(ArchiveLimits()), sink.data, 1 << 20)

    assert read_again(archive, scan) == ["a.txt"]


def test_a_retried_download_starts_the_scan_again(tmp_path: Path) -> None:
    data = mixed_zip()
    archive = tmp_path / "t.zip"
    archive.write_bytes(data)
    scan = ZipScan(ArchiveLimits())
    scan.start()
    scan.feed(data[:1000] + b"garbage after a broken connection")

    feed(scan, data, 4096)

    assert read_again(archive, scan) == []


def test_a_bomb_stops_the_scan_early(tmp_path: Path) -> None:
    """Inflating is bounded by what came down: a high ratio is left to the check, whose
    limits apply as before."""
    data = zip_bytes({"zeros.bin": bytes(60 << 20)})
    assert len(data) < 100_000
    scan = feed(ZipScan(ArchiveLimits()), data, 1 << 20)

    assert scan.stopped
    archive = tmp_path / "t.zip"
    archive.write_bytes(data)
    assert read_again(archive, scan) == ["zeros.bin"]
    with pytest.raises(UnsafeArchive, match="limit"):
        check_zip(archive, ArchiveLimits(max_total_bytes=50 << 20), scan)


def test_two_entries_on_the_same_bytes_are_read_again(tmp_path: Path) -> None:
    """The directory points a second name at the first entry's header: the scan saw that
    header once, so neither entry counts as read, and reading finds the names differ."""
    data = bytearray(zip_bytes({"a.txt": "same", "b.txt": "same"}))
    second = data.index(b"PK\x01\x02", data.index(b"PK\x01\x02") + 1)
    struct.pack_into("<I", data, second + 42, 0)  # b.txt's header offset: a.txt's
    archive = tmp_path / "t.zip"
    archive.write_bytes(bytes(data))

    scan = feed(ZipScan(ArchiveLimits()), bytes(data), 1 << 20)

    with pytest.raises(UnsafeArchive, match=r"differ|zip"):
        check_zip(archive, ArchiveLimits(), scan)


def test_a_scan_of_different_bytes_is_not_trusted(tmp_path: Path) -> None:
    """What matters is the directory of the file on disk: a scan of other bytes (a zip with
    the same names, other contents) covers nothing."""
    archive = tmp_path / "t.zip"
    archive.write_bytes(zip_bytes({"a.txt": "on disk"}))
    scan = feed(ZipScan(ArchiveLimits()), zip_bytes({"a.txt": "in the scan"}), 1 << 20)

    assert read_again(archive, scan) == ["a.txt"]


class _Unseekable(io.RawIOBase):
    def __init__(self) -> None:
        self.data = b""

    def writable(self) -> bool:
        return True

    def write(self, b: bytes) -> int:  # type: ignore[override]
        self.data += bytes(b)
        return len(b)
