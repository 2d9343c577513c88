"""`ulos-py storage`: put submissions on the FTP server and get results back."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import click

from ulos_py.adapters.ftp import FtpAddress, FtpStorage, RetryPolicy
from ulos_py.archive import pack
from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.settings import ConnectionSettings, load


@click.group()
def storage() -> None:
    """Upload and download task zips (REMOTE_STORAGE_* variables)."""


def _storage(settings: ConnectionSettings) -> FtpStorage:
    return FtpStorage(FtpAddress.of(settings), connections=1, retry=RetryPolicy())


@storage.command()
@click.argument("local", type=click.Path(exists=True, path_type=Path))
@click.argument("remote")
@env_file_option
@one_line_errors
def upload(local: Path, remote: str, env_file: Path | None) -> None:
    """Upload LOCAL (a zip, or a folder zipped on the way) to the absolute path REMOTE."""
    settings = load(ConnectionSettings, env_file)
    asyncio.run(_upload(settings, local, remote, folder=local.is_dir()))
    click.echo(f"uploaded {local} to {remote}")


async def _upload(settings: ConnectionSettings, local: Path, remote: str, folder: bool) -> None:
    ftp = _storage(settings)
    try:
        await ftp.make_parents(remote)
        if folder:
            with tempfile.TemporaryDirectory(prefix="ulos-upload-") as scratch:
                archive = Path(scratch) / "upload.zip"
                pack(local, archive)
                await ftp.upload(archive, remote)
        else:
            await ftp.upload(local, remote)
    finally:
        await ftp.close()


@storage.command()
@click.argument("remote")
@click.argument("local", type=click.Path(path_type=Path))
@env_file_option
@one_line_errors
def download(remote: str, local: Path, env_file: Path | None) -> None:
    """Download the file at REMOTE to the local file LOCAL."""
    settings = load(ConnectionSettings, env_file)
    asyncio.run(_download(settings, remote, local))
    click.echo(f"downloaded {remote} to {local}")


async def _download(settings: ConnectionSettings, remote: str, local: Path) -> None:
    ftp = _storage(settings)
    try:
        await ftp.download(remote, local)
    finally:
        await ftp.close()
