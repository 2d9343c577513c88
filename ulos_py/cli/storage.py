"""`ulos-py storage`: put submissions on the FTP server and get results back."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import click

from ulos_py.adapters.ftp import FtpAddress, FtpStorage, RemoteEntry, RetryPolicy
from ulos_py.archive import pack
from ulos_py.cli.common import env_file_option, one_line_errors
from ulos_py.settings import ConnectionSettings, load


@click.group()
def storage() -> None:
    """Upload, download and list task zips on the FTP server (REMOTE_STORAGE_* variables)."""


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


@storage.command("list")
@click.argument("remote", default="/")
@click.option("-r", "--recursive", is_flag=True, help="Descend into folders.")
@env_file_option
@one_line_errors
def list_(remote: str, recursive: bool, env_file: Path | None) -> None:
    """List the folder REMOTE on the FTP server (default /): size, time, path."""
    settings = load(ConnectionSettings, env_file)
    entries = asyncio.run(_list(settings, remote, recursive))
    for entry in entries:
        size = "dir" if entry.is_dir else str(entry.size if entry.size is not None else "?")
        modified = _readable_time(entry.modified)
        click.echo(f"{size:>12}  {modified:<19}  {entry.path}{'/' if entry.is_dir else ''}")
    click.echo(f"{len(entries)} entries in {remote}", err=True)


async def _list(settings: ConnectionSettings, remote: str, recursive: bool) -> list[RemoteEntry]:
    ftp = _storage(settings)
    try:
        return await ftp.list(remote, recursive)
    finally:
        await ftp.close()


def _readable_time(mlsd: str | None) -> str:
    """MLSD's YYYYMMDDHHMMSS as YYYY-MM-DD HH:MM:SS (UTC); as given if it is not that."""
    if mlsd is None or len(mlsd) < 14 or not mlsd[:14].isdigit():
        return mlsd or "-"
    return f"{mlsd[:4]}-{mlsd[4:6]}-{mlsd[6:8]} {mlsd[8:10]}:{mlsd[10:12]}:{mlsd[12:14]}"
