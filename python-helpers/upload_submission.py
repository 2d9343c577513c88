#!/usr/bin/env python3
"""Put a student's submission on the FTP server, where the task's `filePath` will point.

LOCAL is a folder (zipped on the way) or a zip file; REMOTE is the absolute path on the
server, e.g. /lab3/sub-2031.zip. Missing directories above REMOTE are created. Upload
before publishing the task: the node downloads `filePath` as soon as it takes the task.

The server is the one the nodes use: REMOTE_STORAGE_HOST, _PORT, _USERNAME, _PASSWORD
(the options below override them).

Needs only the standard library and aioftp (pip install aioftp).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import sys
import zipfile
from pathlib import Path, PurePosixPath

import aioftp


class Failed(Exception):
    """A problem to report in one line, without a traceback."""


def zip_folder(folder: Path) -> bytes:
    """The folder's files as a zip, with paths relative to the folder."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(folder).as_posix())
    return buffer.getvalue()


def read_submission(local: Path) -> bytes:
    if not local.exists():
        raise Failed(f"{local} does not exist")
    try:
        if local.is_dir():
            return zip_folder(local)
        if zipfile.is_zipfile(local):
            return local.read_bytes()
    except OSError as exc:
        raise Failed(f"cannot read {local}: {exc.strerror or exc}") from exc
    raise Failed(f"{local} is neither a folder nor a zip file")


async def upload(args: argparse.Namespace, data: bytes) -> None:
    remote = PurePosixPath(args.remote)
    # Timeouts, so that a server that accepts the connection but never answers is an
    # error instead of a hang.
    async with aioftp.Client.context(
        args.host,
        args.port,
        args.username,
        args.password,
        socket_timeout=30,
        connection_timeout=10,
    ) as client:
        await client.make_directory(remote.parent, parents=True)
        async with client.upload_stream(remote) as stream:
            await stream.write(data)


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("local", type=Path, help="a folder or a zip file")
    parser.add_argument("remote", help="absolute path of the zip on the FTP server")
    ftp = parser.add_argument_group("FTP server (defaults: the REMOTE_STORAGE_* variables)")
    ftp.add_argument("--host", default=env("REMOTE_STORAGE_HOST", "localhost"))
    ftp.add_argument("--port", type=int, default=env("REMOTE_STORAGE_PORT", "21"))
    ftp.add_argument("--username", default=env("REMOTE_STORAGE_USERNAME", "anonymous"))
    ftp.add_argument("--password", default=env("REMOTE_STORAGE_PASSWORD", ""))
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    where = f"the FTP server at {args.host}:{args.port}"
    try:
        # The nodes refuse a relative path or one with "..": say so now, not in a crash notice.
        remote = PurePosixPath(args.remote)
        if not remote.is_absolute() or ".." in remote.parts:
            raise Failed(f"REMOTE must be an absolute path without '..': {args.remote}")
        data = read_submission(args.local)
        asyncio.run(upload(args, data))
    except Failed as exc:
        print(f"upload_submission: {exc}", file=sys.stderr)
        return 1
    except aioftp.StatusCodeError as exc:  # the server said no: bad login, no permission...
        answer = " ".join(str(line) for line in exc.info).strip()
        codes = ", ".join(str(code) for code in exc.received_codes)
        print(f"upload_submission: {where} answered {codes} {answer}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:  # refused, unknown host, dropped, timed out
        reason = str(exc) or type(exc).__name__
        print(f"upload_submission: cannot reach {where}: {reason}", file=sys.stderr)
        return 1
    print(f"uploaded {args.local} ({len(data)} bytes) to {args.remote}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
