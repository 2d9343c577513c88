"""A failed upload leaves nothing behind: its temporary `.part` file is removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.services import FtpServer, Names
from ulos_py.adapters.ftp import FtpAddress, FtpStorage, RetryPolicy
from ulos_py.errors import StorageError


async def test_an_upload_whose_rename_fails_removes_its_part_file(
    ftp_server: FtpServer, names: Names, tmp_path: Path
) -> None:
    folder = ftp_server.root / names.prefix
    (folder / "taken.zip").mkdir(parents=True)  # a directory where the zip should go
    local = tmp_path / "results.zip"
    local.write_bytes(b"PK" + b"x" * 100_000)
    address = FtpAddress(ftp_server.host, ftp_server.port, ftp_server.username, ftp_server.password)
    storage = FtpStorage(address, connections=2, retry=RetryPolicy(retries=1, first_delay=0.1))
    try:
        with pytest.raises(StorageError):
            await storage.upload(local, f"/{names.prefix}/taken.zip")
    finally:
        await storage.close()

    assert sorted(p.name for p in folder.iterdir()) == ["taken.zip"]  # no .part left
    assert (folder / "taken.zip").is_dir()
