"""Unpacking untrusted zips safely, and packing results."""

from __future__ import annotations

import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from tests.support.fakes import zip_bytes, zip_names
from ulos_py.archive import ArchiveLimits, pack, safe_unpack
from ulos_py.errors import UnsafeArchive


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` → its bytes (None for a directory)."""
    return {
        path.relative_to(root).as_posix(): None if path.is_dir() else path.read_bytes()
        for path in sorted(root.rglob("*"))
    }


def write_zip(path: Path, entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return path


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    """The destination, nested so that an escape would land in a visible place."""
    target = tmp_path / "work" / "files"
    target.mkdir(parents=True)
    return target


def assert_nothing_written(tmp_path: Path, dest: Path, archive: Path) -> None:
    """Nothing in `dest`, and nothing next to it or above it but what the test made."""
    assert tree(dest) == {}
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == sorted(
        ["work", "work/files", archive.relative_to(tmp_path).as_posix()]
    )


def unpack_bytes(tmp_path: Path, dest: Path, data: bytes, **limits: int) -> None:
    archive = tmp_path / "task.zip"
    archive.write_bytes(data)
    safe_unpack(archive, dest, ArchiveLimits(**limits))


# --- what a normal submission unpacks to ------------------------------------------------


def test_unpacks_files_and_folders(tmp_path: Path, dest: Path) -> None:
    unpack_bytes(tmp_path, dest, zip_bytes({"main.py": "x = 1\n", "pkg/": b"", "pkg/a.py": "a"}))

    assert tree(dest) == {"main.py": b"x = 1\n", "pkg": None, "pkg/a.py": b"a"}


def test_single_top_level_folder_is_unpacked_as_its_contents(tmp_path: Path, dest: Path) -> None:
    data = zip_bytes(
        {"alice/": b"", "alice/main.py": "m", "alice/sub/": b"", "alice/sub/t.txt": "t"}
    )

    unpack_bytes(tmp_path, dest, data)

    assert tree(dest) == {"main.py": b"m", "sub": None, "sub/t.txt": b"t"}


def test_single_top_level_folder_without_directory_entries_is_stripped(
    tmp_path: Path, dest: Path
) -> None:
    unpack_bytes(tmp_path, dest, zip_bytes({"alice/main.py": "m", "alice/lib/x.py": "x"}))

    assert tree(dest) == {"lib": None, "lib/x.py": b"x", "main.py": b"m"}


def test_single_top_level_file_is_kept(tmp_path: Path, dest: Path) -> None:
    unpack_bytes(tmp_path, dest, zip_bytes({"main.py": "m"}))

    assert tree(dest) == {"main.py": b"m"}


def test_two_top_level_entries_are_not_stripped(tmp_path: Path, dest: Path) -> None:
    unpack_bytes(tmp_path, dest, zip_bytes({"alice/main.py": "m", "README": "r"}))

    assert tree(dest) == {"README": b"r", "alice": None, "alice/main.py": b"m"}


def test_macos_junk_is_dropped(tmp_path: Path, dest: Path) -> None:
    data = zip_bytes(
        {
            "alice/main.py": "m",
            "alice/.DS_Store": "junk",
            "alice/sub/.DS_Store": "junk",
            "alice/sub/ok.txt": "ok",
            "__MACOSX/": b"",
            "__MACOSX/alice/._main.py": "junk",
        }
    )

    unpack_bytes(tmp_path, dest, data)

    # the junk is gone, and with it the second top-level folder, so `alice/` is stripped
    assert tree(dest) == {"main.py": b"m", "sub": None, "sub/ok.txt": b"ok"}


def test_executable_bit_is_kept_and_nothing_else(tmp_path: Path, dest: Path) -> None:
    script = zipfile.ZipInfo("run.sh")
    script.external_attr = (stat.S_IFREG | 0o4755) << 16
    plain = zipfile.ZipInfo("notes.txt")
    plain.external_attr = (stat.S_IFREG | 0o666) << 16
    archive = write_zip(tmp_path / "task.zip", [(script, b"#!/bin/sh\n"), (plain, b"n")])

    safe_unpack(archive, dest, ArchiveLimits())

    assert stat.S_IMODE((dest / "run.sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "notes.txt").stat().st_mode) == 0o644


def test_empty_zip_unpacks_to_nothing(tmp_path: Path, dest: Path) -> None:
    unpack_bytes(tmp_path, dest, zip_bytes({}))

    assert tree(dest) == {}


# --- what is refused, with nothing written ----------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["../x", "a/../../x", "a/b/../../../x", "..\\x", "./../x"],
)
def test_path_escape_is_refused(tmp_path: Path, dest: Path, name: str) -> None:
    archive = write_zip(tmp_path / "task.zip", [("ok.txt", b"fine"), (name, b"evil")])

    with pytest.raises(UnsafeArchive, match="escapes"):
        safe_unpack(archive, dest, ArchiveLimits())

    assert_nothing_written(tmp_path, dest, archive)


@pytest.mark.parametrize("name", ["/etc/evil", "/x", "C:/evil", "C:\\evil"])
def test_absolute_path_is_refused(tmp_path: Path, dest: Path, name: str) -> None:
    archive = write_zip(tmp_path / "task.zip", [("ok.txt", b"fine"), (name, b"evil")])

    with pytest.raises(UnsafeArchive, match="absolute"):
        safe_unpack(archive, dest, ArchiveLimits())

    assert_nothing_written(tmp_path, dest, archive)


@pytest.mark.parametrize(
    "file_type", [stat.S_IFLNK, stat.S_IFCHR, stat.S_IFIFO, stat.S_IFBLK, stat.S_IFSOCK]
)
def test_link_or_special_file_entry_is_refused(tmp_path: Path, dest: Path, file_type: int) -> None:
    link = zipfile.ZipInfo("link")
    link.external_attr = (file_type | 0o777) << 16
    archive = write_zip(tmp_path / "task.zip", [("ok.txt", b"fine"), (link, b"/etc/passwd")])

    with pytest.raises(UnsafeArchive, match="link"):
        safe_unpack(archive, dest, ArchiveLimits())

    assert_nothing_written(tmp_path, dest, archive)
    assert not os.path.lexists(dest / "link")


def test_over_the_entry_limit_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path / "task.zip", [(f"f{i}.txt", b"x") for i in range(4)])

    with pytest.raises(UnsafeArchive, match="entries"):
        safe_unpack(archive, dest, ArchiveLimits(max_entries=3))

    assert_nothing_written(tmp_path, dest, archive)


def test_at_the_entry_limit_is_accepted(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path / "task.zip", [(f"f{i}.txt", b"x") for i in range(3)])

    safe_unpack(archive, dest, ArchiveLimits(max_entries=3))

    assert sorted(tree(dest)) == ["f0.txt", "f1.txt", "f2.txt"]


def test_over_the_size_limit_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "task.zip"
    archive.write_bytes(zip_bytes({"a.txt": b"12345", "bomb.bin": b"\0" * 1_000_000}))
    assert archive.stat().st_size < 10_000  # compresses well: only the header total tells

    with pytest.raises(UnsafeArchive, match="limit"):
        safe_unpack(archive, dest, ArchiveLimits(max_total_bytes=999_999))

    assert_nothing_written(tmp_path, dest, archive)


def test_at_the_size_limit_is_accepted(tmp_path: Path, dest: Path) -> None:
    unpack_bytes(tmp_path, dest, zip_bytes({"a.txt": "12345", "b.txt": "6789"}), max_total_bytes=9)

    assert tree(dest) == {"a.txt": b"12345", "b.txt": b"6789"}


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty-file"),
        pytest.param(b"PK\x03\x04 not really a zip", id="fake-header"),
        pytest.param(b"%PDF-1.7 a document", id="pdf"),
        pytest.param(zip_bytes({"a.txt": "a" * 100})[:40], id="truncated"),
    ],
)
def test_not_a_zip_is_refused(tmp_path: Path, dest: Path, data: bytes) -> None:
    archive = tmp_path / "task.zip"
    archive.write_bytes(data)

    with pytest.raises(UnsafeArchive, match="zip"):
        safe_unpack(archive, dest, ArchiveLimits())

    assert_nothing_written(tmp_path, dest, archive)


@pytest.mark.filterwarnings("ignore:Duplicate name:UserWarning")
def test_duplicate_entry_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path / "task.zip", [("a.txt", b"first"), ("a.txt", b"second")])

    with pytest.raises(UnsafeArchive, match="twice"):
        safe_unpack(archive, dest, ArchiveLimits())

    # the first copy is never silently replaced by the second
    assert (dest / "a.txt").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.txt", "files", "task.zip", "work"]


# --- pack --------------------------------------------------------------------------------


def test_pack_round_trips_files_and_folders(tmp_path: Path, dest: Path) -> None:
    src = tmp_path / "src"
    (src / "pkg" / "empty").mkdir(parents=True)
    (src / "main.py").write_text("print(1)\n")
    (src / "pkg" / "a.py").write_bytes(b"\x00\x01binary")
    archive = tmp_path / "out.zip"

    pack(src, archive)

    names = zip_names(archive.read_bytes())
    assert names == {
        "main.py": b"print(1)\n",
        "pkg/": b"",
        "pkg/a.py": b"\x00\x01binary",
        "pkg/empty/": b"",
    }
    safe_unpack(archive, dest, ArchiveLimits())
    assert tree(dest) == {
        "main.py": b"print(1)\n",
        "pkg": None,
        "pkg/a.py": b"\x00\x01binary",
        "pkg/empty": None,
    }


def test_pack_leaves_out_links(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("outside the task")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "inner.txt").write_text("also outside")
    src = tmp_path / "src"
    src.mkdir()
    (src / "kept.txt").write_text("kept")
    (src / "file-link").symlink_to(secret)
    (src / "dir-link").symlink_to(outside, target_is_directory=True)
    archive = tmp_path / "out.zip"

    pack(src, archive)

    assert zip_names(archive.read_bytes()) == {"kept.txt": b"kept"}


def test_pack_keeps_the_executable_bit(tmp_path: Path, dest: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "run.sh").write_text("#!/bin/sh\n")
    (src / "run.sh").chmod(0o755)
    archive = tmp_path / "out.zip"

    pack(src, archive)

    with zipfile.ZipFile(io.BytesIO(archive.read_bytes())) as zf:
        assert (zf.getinfo("run.sh").external_attr >> 16) & 0o111
    safe_unpack(archive, dest, ArchiveLimits())
    assert os.access(dest / "run.sh", os.X_OK)


def test_pack_stores_large_incompressible_files_and_deflates_the_rest(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "photo.jpg").write_bytes(os.urandom(300_000))
    (src / "log.txt").write_text("the same line again\n" * 20_000)
    (src / "small.bin").write_bytes(os.urandom(1000))
    archive = tmp_path / "out.zip"

    pack(src, archive)

    with zipfile.ZipFile(archive) as zf:
        kinds = {info.filename: info.compress_type for info in zf.infolist()}
        assert zf.read("photo.jpg") == (src / "photo.jpg").read_bytes()
    assert kinds == {
        "log.txt": zipfile.ZIP_DEFLATED,
        "photo.jpg": zipfile.ZIP_STORED,
        "small.bin": zipfile.ZIP_DEFLATED,
    }
