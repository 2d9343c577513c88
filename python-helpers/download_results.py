#!/usr/bin/env python3
"""Fetch a task's results zip from the FTP server and list (or extract) what is in it.

After each stage the node uploads the task's files back to the task's `filePath`, with
that stage's output added as output_<exchange>_<routingKey>.txt, so REMOTE is the same
path the task was published with.

  download_results.py /lab3/sub-2031.zip                    # list the entries
  download_results.py /lab3/sub-2031.zip --show 'output_*'  # print the stage outputs
  download_results.py /lab3/sub-2031.zip --save sub-2031.zip --extract sub-2031/

The server is the one the nodes use: REMOTE_STORAGE_HOST, _PORT, _USERNAME, _PASSWORD
(the options below override them).

Needs only the standard library and aioftp (pip install aioftp).
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import io
import os
import sys
import zipfile
from pathlib import Path

import aioftp


class Failed(Exception):
    """A problem to report in one line, without a traceback."""


async def download(args: argparse.Namespace) -> bytes:
    chunks: list[bytes] = []
    async with (
        aioftp.Client.context(
            args.host,
            args.port,
            args.username,
            args.password,
            socket_timeout=30,
            connection_timeout=10,
        ) as client,
        client.download_stream(args.remote) as stream,
    ):
        async for block in stream.iter_by_block():
            chunks.append(block)
    return b"".join(chunks)


def report(args: argparse.Namespace, data: bytes) -> None:
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise Failed(f"{args.remote} is not a zip file ({len(data)} bytes)") from exc
    with archive:
        for entry in archive.infolist():
            print(f"{entry.file_size:>10}  {entry.filename}")
        for entry in archive.infolist():
            if args.show and fnmatch.fnmatch(entry.filename, args.show):
                print(f"\n--- {entry.filename}")
                print(archive.read(entry).decode("utf-8", errors="replace"), end="")
        if args.extract:
            # extractall() keeps every entry inside the target folder (it drops absolute
            # paths and ".." from names), so even a hostile zip cannot write elsewhere.
            archive.extractall(args.extract)
            print(f"extracted into {args.extract}")


def parse_args() -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("remote", help="absolute path of the zip on the FTP server")
    parser.add_argument("--save", type=Path, metavar="FILE", help="keep the zip in FILE")
    parser.add_argument("--extract", type=Path, metavar="DIR", help="unpack it into DIR")
    parser.add_argument("--show", metavar="GLOB", help="print the entries matching GLOB")
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
        data = asyncio.run(download(args))
    except aioftp.StatusCodeError as exc:  # no such file, bad login, no permission...
        answer = " ".join(str(line) for line in exc.info).strip()
        codes = ", ".join(str(code) for code in exc.received_codes)
        print(f"download_results: {where} answered {codes} {answer}", file=sys.stderr)
        return 1
    except (OSError, TimeoutError) as exc:  # refused, unknown host, dropped, timed out
        reason = str(exc) or type(exc).__name__
        print(f"download_results: cannot reach {where}: {reason}", file=sys.stderr)
        return 1
    try:
        if args.save:
            args.save.write_bytes(data)
            print(f"saved {args.remote} to {args.save}")
        report(args, data)
    except Failed as exc:
        print(f"download_results: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"download_results: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
