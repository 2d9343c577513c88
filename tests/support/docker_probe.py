"""The test probe executor (tests/integration/docker_probe) in a registry of its own, a
TCP proxy to the Docker engine that a test can cut, and zips of folders."""

from __future__ import annotations

import asyncio
import contextlib
import io
import shutil
import zipfile
from pathlib import Path

from tests.support.services import PROBE_EXECUTOR


def probe_registry(tmp_path: Path, settings: str = "", image: str | None = None) -> Path:
    """A registry routing stage `probe` to a copy of the probe executor with extra settings."""
    folder = tmp_path / "probe"
    folder.mkdir()
    shutil.copy(PROBE_EXECUTOR / "Dockerfile", folder)
    base = (PROBE_EXECUTOR / "executor.toml").read_text()
    if image is not None:
        base = f'image = "{image}"\n'
    (folder / "executor.toml").write_text(base + settings)
    registry = tmp_path / "registry.toml"
    registry.write_text(
        '[[route]]\nstage = "probe"\nexecutor = "probe"\n\n'
        '[executor.probe]\nkind = "docker"\nfolder = "probe"\n'
    )
    return registry


class EngineProxy:
    """The local engine's socket offered on TCP, as a remote engine would be; can go away.

    Stopping it closes every open connection too, so the node sees the engine vanish, as
    when a remote engine host goes down.
    """

    def __init__(self, socket_path: str = "/var/run/docker.sock") -> None:
        self.socket_path = socket_path
        self.port = 0
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for pipe in self.pipes:
            pipe.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)
        await self.server.wait_closed()

    async def _serve(
        self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter
    ) -> None:
        pipe = asyncio.current_task()
        assert pipe is not None
        self.pipes.add(pipe)
        engine_in, engine_out = await asyncio.open_unix_connection(self.socket_path)
        try:
            await asyncio.gather(_copy(client_in, engine_out), _copy(engine_in, client_out))
        finally:
            for writer in (client_out, engine_out):
                writer.close()
            self.pipes.discard(pipe)


async def _copy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()
    with contextlib.suppress(OSError):
        writer.write_eof()


def zip_folder(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder).as_posix())
    return buffer.getvalue()
