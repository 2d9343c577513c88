"""A task's files in the form its executor asks for: none (the zip gets the output
appended), a tar stream (from the zip, back into a zip), or a directory."""

from __future__ import annotations

import asyncio
import io
import tarfile
import zipfile
from pathlib import Path, PurePosixPath
from unittest import mock

import pytest

from tests.support.fakes import zip_bytes, zip_names
from ulos_py.archive import ArchiveLimits
from ulos_py.errors import ExecutionCrashed, UnsafeArchive
from ulos_py.task_files import WorkspaceFiles
from ulos_py.zip_stream import ZipPlan

OUTPUT = "output_lab_check.txt"


async def checked(tmp_path: Path, data: bytes) -> WorkspaceFiles:
    root = tmp_path / "space"
    root.mkdir()
    files = WorkspaceFiles(root)
    files.downloaded.write_bytes(data)
    await files.check(ArchiveLimits())
    return files


async def test_untouched_files_get_the_output_appended_without_unpacking(tmp_path: Path) -> None:
    files = await checked(tmp_path, zip_bytes({"main.py": "x = 1\n", "pkg/": b"", "pkg/a": "a"}))

    with mock.patch.object(asyncio, "to_thread", side_effect=AssertionError("a thread hop")):
        upload = await files.seal(OUTPUT, "PASS\n")

    assert upload == files.downloaded  # the same file, added to
    assert zip_names(upload.read_bytes()) == {
        "main.py": b"x = 1\n",
        "pkg/": b"",
        "pkg/a": b"a",
        OUTPUT: b"PASS\n",
    }
    assert sorted(p.name for p in files.root.iterdir()) == ["task.zip"]  # no tree, no copy


async def test_a_wrapped_zip_is_uploaded_as_the_tree_would_have_been(tmp_path: Path) -> None:
    files = await checked(
        tmp_path, zip_bytes({"hw/": b"", "hw/main.py": "x", "__MACOSX/._main.py": "junk"})
    )

    upload = await files.seal(OUTPUT, "out\n")

    assert zip_names(upload.read_bytes()) == {"main.py": b"x", OUTPUT: b"out\n"}
    assert isinstance(upload, ZipPlan)  # uploaded from the zip as it came:
    assert sorted(p.name for p in files.root.iterdir()) == ["task.zip"]  # no second copy


async def test_an_earlier_output_of_the_same_stage_is_replaced(tmp_path: Path) -> None:
    files = await checked(tmp_path, zip_bytes({"main.py": "x", OUTPUT: "first run\n"}))

    upload = await files.seal(OUTPUT, "second run\n")

    with zipfile.ZipFile(io.BytesIO(upload.read_bytes())) as zf:
        assert zf.namelist().count(OUTPUT) == 1
        assert zf.read(OUTPUT) == b"second run\n"


async def test_a_folder_named_like_the_output_is_an_execution_crash(tmp_path: Path) -> None:
    files = await checked(tmp_path, zip_bytes({f"{OUTPUT}/a": "x", "b": "y"}))

    with pytest.raises(ExecutionCrashed, match="cannot write the output file"):
        await files.seal(OUTPUT, "out\n")


async def test_an_unsafe_zip_is_refused_at_check(tmp_path: Path) -> None:
    with pytest.raises(UnsafeArchive, match="escapes"):
        await checked(tmp_path, zip_bytes({"../evil": "x"}))


async def test_a_directory_is_unpacked_only_when_asked_for_and_packed_again(
    tmp_path: Path,
) -> None:
    files = await checked(tmp_path, zip_bytes({"hw/main.py": "x", "hw/data/in.txt": "1"}))

    tree = await files.directory()
    assert await files.directory() == tree  # once
    (tree / "result.txt").write_text("10/10\n")
    (tree / "main.py").unlink()
    upload = await files.seal(OUTPUT, "out\n")

    assert zip_names(upload.read_bytes()) == {
        "data/": b"",
        "data/in.txt": b"1",
        "result.txt": b"10/10\n",
        OUTPUT: b"out\n",
    }


def results_tar(entries: dict[str, bytes]) -> io.BytesIO:
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w") as tar:
        for name, data in entries.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    stream.seek(0)
    return stream


async def test_tar_in_and_out_without_a_tree(tmp_path: Path) -> None:
    files = await checked(tmp_path, zip_bytes({"w/main.py": "x", "w/src/u.py": "u"}))

    stream = await files.tar_for(PurePosixPath("/task"), (10001, 10001))
    with stream, tarfile.open(fileobj=stream) as tar:
        assert sorted(tar.getnames()) == ["task", "task/main.py", "task/src", "task/src/u.py"]
    taken = await files.take_tar(
        results_tar({"task/report.txt": b"ok", "task/OK": b""}), PurePosixPath("OK")
    )
    upload = await files.seal(OUTPUT, "out\n")

    assert taken.marker_found
    assert zip_names(upload.read_bytes()) == {"report.txt": b"ok", OUTPUT: b"out\n"}
    assert not (files.root / "files").exists()


async def test_tar_in_and_out_of_a_directory_taken_before(tmp_path: Path) -> None:
    files = await checked(tmp_path, zip_bytes({"main.py": "x"}))
    tree = await files.directory()
    (tree / "made.txt").write_text("m")

    stream = await files.tar_for(PurePosixPath("/task"), (10001, 10001))
    with stream, tarfile.open(fileobj=stream) as tar:
        assert sorted(tar.getnames()) == ["task", "task/made.txt", "task/main.py"]
    taken = await files.take_tar(results_tar({"task/r.txt": b"r", "task/OK": b""}), None)
    upload = await files.seal(OUTPUT, "out\n")

    assert not taken.marker_found
    assert zip_names(upload.read_bytes()) == {"r.txt": b"r", "OK": b"", OUTPUT: b"out\n"}
