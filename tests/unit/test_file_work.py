"""Small file work runs on the loop, anything larger in a thread: the bounds hold."""

from __future__ import annotations

import io
import threading
import zipfile
from pathlib import Path

from ulos_py.file_work import SMALL_BYTES, SMALL_ENTRIES, run_file_work, small_tree, small_zip


def write_zip(path: Path, entries: dict[str, bytes]) -> Path:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return path


def test_a_typical_submission_is_small(tmp_path: Path) -> None:
    files = {f"src/m{n}.py": b"print(%d)\n" % n for n in range(20)}
    assert small_zip(write_zip(tmp_path / "a.zip", files))


def test_too_many_entries_is_not_small(tmp_path: Path) -> None:
    files = {f"f{n}": b"" for n in range(SMALL_ENTRIES + 1)}
    assert not small_zip(write_zip(tmp_path / "a.zip", files))


def test_a_zip_that_unpacks_big_is_not_small_however_small_it_is(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "bomb.zip", {"zeros": bytes(SMALL_BYTES + 1)})
    assert archive.stat().st_size < 4096
    assert not small_zip(archive)


def test_a_big_zip_file_is_not_small(tmp_path: Path) -> None:
    noise = bytes(range(256))  # stored, not deflated: the file itself is big
    archive = tmp_path / "big.zip"
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("blob", noise * (SMALL_BYTES // len(noise) + 1))
    archive.write_bytes(buffer.getvalue())
    assert not small_zip(archive)


def test_what_is_not_a_zip_goes_to_the_thread_that_reports_it(tmp_path: Path) -> None:
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    assert not small_zip(tmp_path / "junk.zip")
    assert not small_zip(tmp_path / "missing.zip")


def test_small_tree_counts_entries_and_bytes(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_bytes(b"x" * 100)
    assert small_tree(tmp_path)
    (tmp_path / "d" / "big").write_bytes(b"x" * SMALL_BYTES)
    assert not small_tree(tmp_path)


def test_small_tree_stops_at_the_entry_bound(tmp_path: Path) -> None:
    for n in range(SMALL_ENTRIES + 1):
        (tmp_path / f"f{n}").touch()
    assert not small_tree(tmp_path)
    assert not small_tree(tmp_path / "missing")


def test_a_link_is_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "huge").write_bytes(b"x" * (SMALL_BYTES + 1))
    inside = tmp_path / "inside"
    inside.mkdir()
    (inside / "link").symlink_to(outside, target_is_directory=True)
    assert small_tree(inside)


async def test_small_work_runs_on_the_loop_thread_and_large_work_does_not() -> None:
    here = threading.get_ident()
    assert await run_file_work(True, threading.get_ident) == here
    assert await run_file_work(False, threading.get_ident) != here
