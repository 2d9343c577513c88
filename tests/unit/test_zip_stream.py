"""Every archive check of SPEC §3 on the stream path: the zip is checked where it lies, the
output appended in place, and tar streams made from it and turned back into it."""

from __future__ import annotations

import io
import random
import stat
import struct
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from tests.support.fakes import zip_bytes, zip_names
from ulos_py.archive import ArchiveLimits
from ulos_py.errors import ExecutionCrashed, UnsafeArchive
from ulos_py.zip_scan import ZipScan
from ulos_py.zip_stream import (
    ZipPlan,
    append_file,
    check_zip,
    plan_rewrite,
    tar_to_zip,
    zip_to_tar,
)


def write_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


def listing(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def scanned(archive: Path, limits: ArchiveLimits, block: int) -> ZipScan:
    """A scan fed `archive` as a download would, in blocks of `block` bytes."""
    scan = ZipScan(limits)
    data = archive.read_bytes()
    for start in range(0, len(data), block):
        scan.feed(data[start : start + block])
    return scan


def refused(archive: Path, match: str, limits: ArchiveLimits | None = None) -> None:
    """check_zip refuses `archive` and writes nothing beside it; the same when a scan of the
    download went before (split anywhere, or in large blocks)."""
    before = listing(archive.parent)
    limits = limits or ArchiveLimits()
    for scan in (None, scanned(archive, limits, 7), scanned(archive, limits, 1 << 20)):
        with pytest.raises(UnsafeArchive, match=match):
            check_zip(archive, limits, scan)
    assert listing(archive.parent) == before


# --- check_zip: what is refused --------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/../../x", "..\\x", "./../x"])
def test_path_escape_is_refused(tmp_path: Path, name: str) -> None:
    refused(write_zip(tmp_path / "t.zip", [("ok.txt", b"ok"), (name, b"evil")]), "escapes")


@pytest.mark.parametrize("name", ["/etc/evil", "C:/evil", "C:\\evil"])
def test_absolute_path_is_refused(tmp_path: Path, name: str) -> None:
    refused(write_zip(tmp_path / "t.zip", [("ok.txt", b"ok"), (name, b"evil")]), "absolute")


@pytest.mark.parametrize(
    "file_type", [stat.S_IFLNK, stat.S_IFCHR, stat.S_IFIFO, stat.S_IFBLK, stat.S_IFSOCK]
)
def test_links_and_device_files_are_refused(tmp_path: Path, file_type: int) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (file_type | 0o777) << 16
    refused(write_zip(tmp_path / "t.zip", [("ok.txt", b"ok"), (link, b"/etc/passwd")]), "link")


def test_over_the_entry_limit_is_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "t.zip", [(f"f{i}", b"x") for i in range(4)])
    refused(archive, "entries", ArchiveLimits(max_entries=3))
    check_zip(archive, ArchiveLimits(max_entries=4))


def test_a_zip_bomb_is_refused_by_its_declared_size(tmp_path: Path) -> None:
    archive = tmp_path / "t.zip"
    archive.write_bytes(zip_bytes({"a.txt": b"12345", "bomb.bin": bytes(1_000_000)}))
    assert archive.stat().st_size < 10_000

    refused(archive, "limit", ArchiveLimits(max_total_bytes=999_999))


def test_a_header_that_understates_the_size_is_caught_by_reading(tmp_path: Path) -> None:
    """A bomb whose headers claim 10 bytes: never more than 10 are read, and the CRC fails."""
    data = bytearray(zip_bytes({"bomb.bin": bytes(1_000_003)}))
    true_size = struct.pack("<I", 1_000_003)
    assert data.count(true_size) == 2  # local header and central directory
    archive = tmp_path / "t.zip"
    archive.write_bytes(bytes(data).replace(true_size, struct.pack("<I", 10)))

    refused(archive, "zip|CRC", ArchiveLimits(max_total_bytes=100))


def test_a_corrupt_entry_is_refused(tmp_path: Path) -> None:
    data = bytearray(zip_bytes({"a.txt": "a fairly long text " * 50}))
    data[40] ^= 0xFF  # inside the compressed data
    archive = tmp_path / "t.zip"
    archive.write_bytes(bytes(data))

    refused(archive, "zip|unpack")


def test_an_encrypted_entry_is_refused(tmp_path: Path) -> None:
    data = bytearray(zip_bytes({"secret.txt": "s"}))
    central = data.index(b"PK\x01\x02")
    data[central + 8] |= 0x01  # "encrypted", in the central directory's flags
    archive = tmp_path / "t.zip"
    archive.write_bytes(bytes(data))

    refused(archive, "encrypted")


@pytest.mark.parametrize(
    "data",
    [b"", b"PK\x03\x04 not really a zip", zip_bytes({"a.txt": "a" * 100})[:40]],
    ids=["empty", "fake-header", "truncated"],
)
def test_not_a_zip_is_refused(tmp_path: Path, data: bytes) -> None:
    archive = tmp_path / "t.zip"
    archive.write_bytes(data)
    refused(archive, "zip")


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
def test_a_name_given_twice_is_refused(tmp_path: Path) -> None:
    refused(write_zip(tmp_path / "t.zip", [("a.txt", b"1"), ("a.txt", b"2")]), "twice")


def test_a_name_that_is_both_file_and_folder_is_refused(tmp_path: Path) -> None:
    refused(write_zip(tmp_path / "t.zip", [("a", b"1"), ("a/b.txt", b"2")]), "file and a folder")


# --- check_zip: what it finds ----------------------------------------------------------


def test_contents_and_whether_the_zip_can_be_added_to_as_it_is(tmp_path: Path) -> None:
    plain = check_zip(write_zip(tmp_path / "a.zip", [("m.py", b""), ("d/x", b"")]), ArchiveLimits())
    wrapped = check_zip(write_zip(tmp_path / "b.zip", [("w/m.py", b"")]), ArchiveLimits())
    junk = check_zip(
        write_zip(tmp_path / "c.zip", [("m.py", b""), ("__MACOSX/._m.py", b"")]), ArchiveLimits()
    )

    assert (plain.files, plain.folders, plain.as_stored) == ({"m.py", "d/x"}, {"d"}, True)
    assert (wrapped.files, wrapped.as_stored) == ({"m.py"}, False)
    assert (junk.files, junk.as_stored) == ({"m.py"}, False)


# --- append and rewrite ----------------------------------------------------------------


def test_append_leaves_the_entries_as_they_were(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "t.zip", [("a.txt", b"a" * 5000), ("b/c.bin", bytes(300))])
    with zipfile.ZipFile(archive) as zf:
        data_end = zf.start_dir
    before = archive.read_bytes()[:data_end]

    append_file(archive, "out.txt", b"result\n")

    assert archive.read_bytes()[:data_end] == before  # not a byte of them rewritten
    assert zip_names(archive.read_bytes()) == {
        "a.txt": b"a" * 5000,
        "b/c.bin": bytes(300),
        "out.txt": b"result\n",
    }


def test_rewrite_strips_wrapper_and_junk_drops_a_name_and_adds_the_output(
    tmp_path: Path,
) -> None:
    big = bytes(range(256)) * 400
    source = write_zip(
        tmp_path / "t.zip",
        [
            ("w/", b""),
            ("w/a.txt", b"a fairly compressible line\n" * 200),
            ("w/out.txt", b"old"),
            ("w/.DS_Store", b"x"),
        ],
    )
    with zipfile.ZipFile(source, "a") as zf:
        zf.writestr(zipfile.ZipInfo("w/stored.bin"), big)  # ZIP_STORED by default

    with zipfile.ZipFile(source) as zf:
        deflated_size = zf.getinfo("w/a.txt").compress_size

    plan = plan_rewrite(source, ArchiveLimits(), "out.txt", "out.txt", b"new")
    made = tmp_path / "new.zip"
    made.write_bytes(plan.read_bytes())

    assert plan.size == made.stat().st_size
    with zipfile.ZipFile(made) as zf:
        assert sorted(zf.namelist()) == ["a.txt", "out.txt", "stored.bin"]
        assert zf.testzip() is None  # every CRC holds
        assert zf.getinfo("stored.bin").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("a.txt").compress_type == zipfile.ZIP_DEFLATED
        assert zf.getinfo("a.txt").compress_size == deflated_size  # copied, not deflated again
        assert zf.read("stored.bin") == big
        assert zf.read("out.txt") == b"new"
    assert check_zip(made, ArchiveLimits()).as_stored  # the next stage can add to it in place


def test_a_plan_holds_headers_and_reads_the_entries_from_the_source(tmp_path: Path) -> None:
    blob = random.Random(7).randbytes(3 << 20)
    source = write_zip(tmp_path / "t.zip", [("w/a.bin", blob), ("w/b.bin", blob[:1000])])

    plan = plan_rewrite(source, ArchiveLimits(), "out.txt", "out.txt", b"result\n")

    made = sum(len(part) for part in plan.parts if isinstance(part, bytes))
    assert made < 1000  # headers, the output entry, the central directory
    with plan.open() as reader:  # read in blocks of any size, across the parts
        blocks = [reader.read(4096)]
        while block := reader.read(100_000):
            blocks.append(block)
    assert zip_names(b"".join(blocks)) == {
        "a.bin": blob,
        "b.bin": blob[:1000],
        "out.txt": b"result\n",
    }


def test_a_plan_refuses_an_entry_whose_bytes_run_into_the_directory(tmp_path: Path) -> None:
    data = bytearray(zip_bytes({"w/a.txt": "x" * 100, "w/b.txt": "y"}))
    offset = data.index(b"PK\x01\x02")  # the first central directory record
    size = struct.unpack_from("<I", data, offset + 20)[0]
    struct.pack_into("<I", data, offset + 20, size + 10_000)  # its compressed size lies
    source = tmp_path / "t.zip"
    source.write_bytes(bytes(data))

    with pytest.raises(UnsafeArchive, match="cut short"):
        plan_rewrite(source, ArchiveLimits(), "out.txt", "out.txt", b"")


def test_a_plan_whose_source_shrank_fails_to_read(tmp_path: Path) -> None:
    source = write_zip(tmp_path / "t.zip", [("w/a.bin", random.Random(3).randbytes(50_000))])
    plan: ZipPlan = plan_rewrite(source, ArchiveLimits(), "o", "o", b"")
    with source.open("r+b") as file:
        file.truncate(100)

    with pytest.raises(OSError, match="shorter"):
        plan.read_bytes()


# --- zip to tar ------------------------------------------------------------------------


def test_zip_to_tar_owns_every_entry_to_the_container_user(tmp_path: Path) -> None:
    run = zipfile.ZipInfo("w/bin/run.sh")
    run.external_attr = (stat.S_IFREG | 0o4755) << 16
    archive = write_zip(tmp_path / "t.zip", [("w/src/a/b.py", b"b = 1\n"), (run, b"#!/bin/sh\n")])
    stream = io.BytesIO()

    zip_to_tar(archive, stream, ArchiveLimits(), "task", (10001, 10002))

    stream.seek(0)
    with tarfile.open(fileobj=stream) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert sorted(members) == [
            "task",
            "task/bin",
            "task/bin/run.sh",
            "task/src",
            "task/src/a",
            "task/src/a/b.py",
        ]  # wrapper stripped; the folders the zip only implies are there, to be owned
        assert {(m.uid, m.gid) for m in members.values()} == {(10001, 10002)}
        assert members["task/bin/run.sh"].mode == 0o755  # no setuid
        assert members["task/src/a/b.py"].mode == 0o644
        reader = tar.extractfile("task/src/a/b.py")
        assert reader is not None and reader.read() == b"b = 1\n"


# --- tar to zip ------------------------------------------------------------------------


def container_tar(entries: list[tuple[tarfile.TarInfo, bytes]]) -> io.BytesIO:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for info, data in entries:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isfile() else None)
    stream.seek(0)
    return stream


def entry(name: str, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    return info


def test_results_become_the_zip_links_and_devices_left_out_and_named(tmp_path: Path) -> None:
    link = entry("task/passwd", tarfile.SYMTYPE)
    link.linkname = "/etc/passwd"
    hard = entry("task/hard", tarfile.LNKTYPE)
    hard.linkname = "task/ok.txt"
    stream = container_tar(
        [
            (entry("task", tarfile.DIRTYPE, 0o755), b""),
            (entry("task/locked", tarfile.DIRTYPE, 0o000), b""),
            (entry("task/locked/secret.txt", mode=0o000), b"s"),
            (entry("task/run", mode=0o4755), b"x"),
            (entry("task/ok.txt"), b"ok"),
            (link, b""),
            (hard, b""),
            (entry("task/null", tarfile.CHRTYPE), b""),
            (entry("task/fifo", tarfile.FIFOTYPE), b""),
        ]
    )

    taken = tar_to_zip(stream, tmp_path / "r.zip", ArchiveLimits(), marker=None)

    assert taken.left_out == ["passwd", "hard", "null", "fifo"]
    assert not taken.marker_found
    with zipfile.ZipFile(tmp_path / "r.zip") as zf:
        assert sorted(zf.namelist()) == ["locked/", "locked/secret.txt", "ok.txt", "run"]
        modes = {i.filename: (i.external_attr >> 16) & 0o7777 for i in zf.infolist()}
    assert modes == {"locked/": 0o755, "locked/secret.txt": 0o644, "ok.txt": 0o644, "run": 0o755}


@pytest.mark.parametrize("name", ["task/../../escaped.txt", "/etc/evil"])
def test_results_escaping_the_task_folder_crash(tmp_path: Path, name: str) -> None:
    with pytest.raises(ExecutionCrashed, match="unsafe"):
        tar_to_zip(container_tar([(entry(name), b"x")]), tmp_path / "r.zip", ArchiveLimits(), None)


@pytest.mark.parametrize(
    ("limits", "count", "size"),
    [(ArchiveLimits(max_entries=3), 4, 1), (ArchiveLimits(max_total_bytes=100), 2, 60)],
)
def test_results_over_the_limits_crash(
    tmp_path: Path, limits: ArchiveLimits, count: int, size: int
) -> None:
    stream = container_tar([(entry(f"task/f{i}"), b"x" * size) for i in range(count)])

    with pytest.raises(ExecutionCrashed, match="more than"):
        tar_to_zip(stream, tmp_path / "r.zip", limits, None)


def test_results_naming_a_file_twice_crash(tmp_path: Path) -> None:
    stream = container_tar([(entry("task/a"), b"1"), (entry("task/a"), b"2")])

    with pytest.raises(ExecutionCrashed, match="twice"):
        tar_to_zip(stream, tmp_path / "r.zip", ArchiveLimits(), None)


def test_the_marker_is_found_and_not_kept(tmp_path: Path) -> None:
    stream = container_tar([(entry("task/out/PASSED"), b""), (entry("task/a"), b"1")])

    taken = tar_to_zip(stream, tmp_path / "r.zip", ArchiveLimits(), PurePosixPath("out/PASSED"))

    assert taken.marker_found
    assert zip_names((tmp_path / "r.zip").read_bytes()) == {"a": b"1"}


def test_a_folder_named_like_the_marker_is_no_marker(tmp_path: Path) -> None:
    stream = container_tar([(entry("task/PASSED", tarfile.DIRTYPE, 0o755), b"")])

    taken = tar_to_zip(stream, tmp_path / "r.zip", ArchiveLimits(), PurePosixPath("PASSED"))

    assert not taken.marker_found


def test_a_broken_tar_is_an_execution_crash(tmp_path: Path) -> None:
    data = container_tar([(entry("task/a"), b"x" * 2000)]).getvalue()[:1000]

    with pytest.raises(ExecutionCrashed, match="could not be read"):
        tar_to_zip(io.BytesIO(data), tmp_path / "r.zip", ArchiveLimits(), None)


def test_large_incompressible_results_are_stored(tmp_path: Path) -> None:
    noise = random.Random(1).randbytes(200_000)
    stream = container_tar([(entry("task/noise.bin"), noise), (entry("task/z"), bytes(200_000))])

    tar_to_zip(stream, tmp_path / "r.zip", ArchiveLimits(), None)

    with zipfile.ZipFile(tmp_path / "r.zip") as zf:
        assert zf.getinfo("noise.bin").compress_type == zipfile.ZIP_STORED
        assert zf.getinfo("z").compress_type == zipfile.ZIP_DEFLATED
        assert zf.read("noise.bin") == noise
