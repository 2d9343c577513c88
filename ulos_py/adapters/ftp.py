"""Task zips on an FTP server through aioftp: pooled connections, retries, atomic uploads.

Connections are kept and reused (a login per file is most of an FTP transfer's cost). A
dropped connection or a 4xx answer is retried with back-off on a fresh connection; a 5xx
answer (missing file, bad credentials) is final at once. Uploads go to a temporary name
that is renamed over the target, so a reader never sees half a zip.

Files stream between disk and socket in blocks, so memory does not grow with the zip. Disk
writes and reads of a MiB go to a thread; a small task zip (one block) is written inline,
where a thread hop would cost more than the page-cache copy it avoids. A download's blocks
are written in order by a worker thread while the next ones come down, and handed there to
a reader (the zip's check, `ulos_py.zip_scan`), so checking a large zip overlaps its
transfer. An upload reads a file, or the zip a `ZipPlan` makes from the downloaded one.

With REMOTE_STORAGE_TLS each connection is explicit FTPS, all by aioftp: `upgrade_to_tls`
sends AUTH TLS before the login (so the password only travels encrypted), then PBSZ 0 and
PROT P, and aioftp opens every passive data connection with TLS too, resuming the control
connection's session. A certificate we do not trust is final (no retry); no message names
the password (aioftp itself logs PASS as stars).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Protocol

import aioftp
import structlog

from ulos_py.errors import ConfigError, StorageError, StorageRefused, StorageUnavailable
from ulos_py.ports import BlockReader
from ulos_py.settings import ConnectionSettings, TlsOptions, tls_refusal
from ulos_py.zip_stream import ZipPlan

log = structlog.get_logger(__name__)

CHUNK = 1 << 16
FILE_BLOCK = 1 << 20
"""Disk I/O unit for large files: big enough that a thread hop per block is cheap."""
SPOOL_DEPTH = 2
"""Blocks of a download waiting to be written at most."""
READ_LIMIT = 256 << 10
"""Stream buffer of a connection: bounds one read (see `FtpStorage._connect`)."""
TIMEOUT = 30.0
DISCARD_TIMEOUT = 5.0
"""Seconds a failed upload waits to remove its temporary file: the task's crash waits."""
CLOSE_TIMEOUT = 5.0
LOGIN_CHECK_TIMEOUT = 10.0
"""Seconds a node waits at start for the FTP server's answer before it goes on without."""


@dataclass(frozen=True)
class FtpAddress:
    host: str
    port: int
    username: str
    password: str = field(repr=False)
    tls: TlsOptions | None = None
    """Explicit FTPS when set."""

    @classmethod
    def of(cls, settings: ConnectionSettings) -> FtpAddress:
        return cls(
            settings.storage_host,
            settings.storage_port,
            settings.storage_username,
            settings.storage_password.get_secret_value(),
            settings.storage_tls_options,
        )


@dataclass(frozen=True)
class RetryPolicy:
    retries: int = 3
    first_delay: float = 0.5

    def delays(self) -> list[float]:
        return [self.first_delay * 2**attempt for attempt in range(self.retries)]


class _Source(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def tell(self) -> int: ...


async def _read_block(source: _Source, size: int) -> bytes:
    """The next block of a source of `size` bytes: a small remainder inline, a MiB in a
    thread."""
    if size - source.tell() <= CHUNK:
        return source.read(CHUNK)
    return await asyncio.to_thread(source.read, FILE_BLOCK)


@contextmanager
def _open_upload(local: Path | ZipPlan) -> Iterator[tuple[_Source, int]]:
    """The bytes to upload and how many: a file, or the zip a plan makes as it is read."""
    if isinstance(local, ZipPlan):
        with local.open() as plan:
            yield plan, plan.size
    else:
        with local.open("rb") as file:
            yield file, os.fstat(file.fileno()).st_size


class _Spool:
    """Writes a download's blocks to its file, and hands them to its reader, in a worker
    thread and in order, while the loop reads on: a zip's check runs beside its download.
    At most SPOOL_DEPTH blocks wait, so memory does not follow the file's size; a small
    file (one block) is written right here, where a thread hop would cost more."""

    def __init__(self, out: BinaryIO, reader: BlockReader | None) -> None:
        self._out, self._reader = out, reader
        self._room = asyncio.Semaphore(SPOOL_DEPTH)
        self._last: asyncio.Future[None] | None = None

    def _write(self, block: bytearray) -> None:
        self._out.write(block)
        if self._reader is not None:
            self._reader.feed(block)

    async def put(self, block: bytearray) -> None:
        if self._last is None and len(block) <= CHUNK:
            self._write(block)
            return
        await self._room.acquire()
        if self._last is not None and self._last.done() and self._last.exception():
            self._room.release()
            await self._last  # a write failed: say so now
        self._last = asyncio.ensure_future(self._after(self._last, block))

    async def _after(self, previous: asyncio.Future[None] | None, block: bytearray) -> None:
        try:
            if previous is not None:
                await previous
            await asyncio.to_thread(self._write, block)
        finally:
            self._room.release()

    async def finish(self) -> None:
        """Wait until every block is written, raising the first write's error."""
        if self._last is not None:
            await self._last

    async def abandon(self) -> None:
        """Wait until the writes under way end, whatever they raise (the download failed)."""
        if self._last is not None:
            with suppress(BaseException):
                await asyncio.shield(self._last)


def _answer(exc: aioftp.StatusCodeError) -> str:
    codes = ", ".join(sorted({str(code) for code in exc.received_codes}))
    message = " ".join(str(line) for line in exc.info).strip() or str(exc)
    return f"{codes} {message}"


def _translate(exc: Exception, what: str) -> StorageError:
    if isinstance(exc, aioftp.StatusCodeError):
        text = f"{what}: server answered {_answer(exc)}"
        if any(str(code).startswith("4") for code in exc.received_codes):
            return StorageUnavailable(text)
        return StorageRefused(text)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return StorageRefused(
            f"{what}: the FTP server showed a certificate that is not trusted "
            f"({exc.verify_message}): check REMOTE_STORAGE_TLS_CA_FILE (the CA that signed it), "
            "REMOTE_STORAGE_HOST (a name the certificate holds) or REMOTE_STORAGE_TLS_VERIFY"
        )
    return StorageUnavailable(f"{what}: {type(exc).__name__}: {exc}".rstrip(": "))


class _Client(aioftp.Client):
    """aioftp's client, closing what it leaves open and sending TYPE once per session.

    aioftp opens a transfer's data connection before sending the command and leaks it when
    the server refuses the command (550 for a missing file): close it with us."""

    _data_writer: asyncio.StreamWriter | None = None
    _type: str | None = None

    async def command(
        self,
        command: str | None = None,
        expected_codes: str | tuple[str, ...] = (),
        wait_codes: str | tuple[str, ...] = (),
        censor_after: int | None = None,
    ) -> Any:
        """aioftp sends TYPE before every transfer, but the server keeps it for the session
        (RFC 959): a repeat is a round trip per transfer for nothing."""
        sets_type = command is not None and command.startswith("TYPE ")
        if sets_type and command == self._type:
            return None
        answer = await super().command(command, expected_codes, wait_codes, censor_after)
        if sets_type:
            self._type = command
        return answer

    async def get_passive_connection(
        self, conn_type: Any = "I", commands: Sequence[str] | None = None
    ) -> Any:
        """aioftp tries EPSV, then PASV, before every transfer: against a server without
        EPSV that is a refused command per transfer. The first refusal settles it for the
        session: PASV from then on."""
        tried = tuple(commands or self._passive_commands)
        try:
            reader, writer = await super().get_passive_connection(conn_type, tried[:1])
        except aioftp.StatusCodeError as exc:
            if len(tried) < 2 or not exc.received_codes[-1].matches("50x"):
                raise
            self._passive_commands = tried[1:]
            reader, writer = await super().get_passive_connection(conn_type, tried[1:])
        self._data_writer = writer
        return reader, writer

    def close(self) -> None:
        if self._data_writer is not None:
            self._data_writer.close()
        super().close()

    async def close_and_wait(self) -> None:
        """Close, and wait until the socket is closed: a TLS connection says goodbye first,
        and a loop that ends before that leaks the socket."""
        self.close()
        with suppress(ConnectionError, TimeoutError, ssl.SSLError):
            await asyncio.wait_for(self.stream.writer.wait_closed(), CLOSE_TIMEOUT)


@dataclass(frozen=True)
class RemoteEntry:
    path: str
    is_dir: bool
    size: int | None
    modified: str | None
    """As the server gives it (MLSD: YYYYMMDDHHMMSS, UTC)."""


class FtpStorage:
    """Storage port on an FTP server."""

    def __init__(self, address: FtpAddress, connections: int, retry: RetryPolicy) -> None:
        self._address = address
        self._tls = address.tls.context() if address.tls is not None else None
        self._retry = retry
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[_Client] = []

    async def _connect(self) -> _Client:
        # `limit` goes to asyncio's open_connection (aioftp hands extra keywords on, through
        # siosocks when that is installed): a read on a data connection then returns up to
        # 256 KiB, where the default limit made a 100 MB download 1600 reads of 64 KiB, each
        # a task for its timeout. Larger limits saved no more CPU and cost RSS.
        client = _Client(socket_timeout=TIMEOUT, connection_timeout=TIMEOUT, limit=READ_LIMIT)
        try:
            await client.connect(self._address.host, self._address.port)
            if self._tls is not None:
                await self._upgrade(client, self._tls)
            await client.login(self._address.username, self._address.password)
        except BaseException:
            client.close()
            raise
        return client

    async def _upgrade(self, client: aioftp.Client, context: ssl.SSLContext) -> None:
        """AUTH TLS, then PBSZ 0 and PROT P, before the login."""
        try:
            await client.upgrade_to_tls(context)
        except aioftp.StatusCodeError as exc:
            where = f"{self._address.host}:{self._address.port}"
            raise StorageRefused(
                f"the FTP server at {where} refused explicit TLS (AUTH TLS, PROT P): "
                f"it answered {_answer(exc)}; check REMOTE_STORAGE_TLS"
            ) from exc

    async def check_login(self) -> None:
        """Log in once, so what no retry can fix stops a node at start, as a wrong broker
        password does: credentials the server refuses, a certificate we do not trust, a
        server that will not speak TLS (ConfigError). A server that does not answer is
        StorageUnavailable: it may come back, and tasks retry. The connection is kept."""
        where = f"the FTP server at {self._address.host}:{self._address.port}"
        try:
            async with asyncio.timeout(LOGIN_CHECK_TIMEOUT), self._client():
                pass
        except aioftp.StatusCodeError as exc:
            codes = {str(code) for code in exc.received_codes}
            if not any(code.startswith("5") for code in codes):
                raise StorageUnavailable(f"{where} answered {_answer(exc)}") from exc
            check = (  # 530 is "not logged in"; others (550 TLS required, say) are policy
                "REMOTE_STORAGE_USERNAME and REMOTE_STORAGE_PASSWORD"
                if "530" in codes
                else "REMOTE_STORAGE_TLS (the server may want TLS) and REMOTE_STORAGE_USERNAME"
            )
            raise ConfigError(
                f"{where} refused user {self._address.username!r} ({_answer(exc)}): check {check}"
            ) from exc
        except StorageRefused as exc:  # it would not speak TLS (see _upgrade)
            raise ConfigError(str(exc)) from exc
        except (OSError, TimeoutError, EOFError) as exc:
            if (refusal := tls_refusal(exc, where, "REMOTE_STORAGE")) is not None:
                raise refusal from exc
            raise _translate(exc, f"logging in to {where}") from exc

    @asynccontextmanager
    async def _client(self) -> AsyncIterator[aioftp.Client]:
        async with self._slots:
            client = self._idle.pop() if self._idle else await self._connect()
            try:
                yield client
            except BaseException:
                client.close()  # its state is unknown: never hand it out again
                raise
            self._idle.append(client)

    async def _attempt(
        self, what: str, operation: Callable[[aioftp.Client], Awaitable[None]]
    ) -> None:
        delays = self._retry.delays()
        for attempt in range(len(delays) + 1):
            try:
                async with self._client() as client:
                    await operation(client)
                return
            except (aioftp.StatusCodeError, OSError, TimeoutError, EOFError) as exc:
                error = _translate(exc, what)
            if isinstance(error, StorageRefused) or attempt == len(delays):
                raise error
            log.warning("storage_retry", reason=str(error), delay=delays[attempt])
            await asyncio.sleep(delays[attempt])

    async def download(
        self, remote_path: str, local_file: Path, reader: BlockReader | None = None
    ) -> None:
        async def fetch(client: aioftp.Client) -> None:
            if reader is not None:
                reader.start()
            with local_file.open("wb") as out:
                spool = _Spool(out, reader)
                try:
                    pending = bytearray()
                    async with client.download_stream(remote_path) as stream:
                        async for block in stream.iter_by_block(FILE_BLOCK):
                            pending += block
                            if len(pending) >= FILE_BLOCK:
                                await spool.put(pending)
                                pending = bytearray()
                    await spool.put(pending)
                except BaseException:
                    await spool.abandon()  # before the file closes under a write
                    raise
                await spool.finish()

        await self._attempt(f"download {remote_path}", fetch)

    async def upload(self, local_file: Path | ZipPlan, remote_path: str) -> None:
        target = PurePosixPath(remote_path)
        partial = str(target.with_name(f".{target.name}.{uuid.uuid4().hex[:12]}.part"))

        async def store(client: aioftp.Client) -> None:
            with _open_upload(local_file) as (source, size):
                async with client.upload_stream(partial) as stream:
                    while block := await _read_block(source, size):
                        await stream.write(block)
            await client.rename(partial, remote_path)

        try:
            await self._attempt(f"upload {remote_path}", store)
        except BaseException:
            await asyncio.shield(self._discard(partial))
            raise

    async def _discard(self, partial: str) -> None:
        """Remove what a failed upload left under its temporary name, on a connection of its
        own (the upload's may be what failed); said in the log if the server will not."""
        try:
            async with asyncio.timeout(DISCARD_TIMEOUT), self._client() as client:
                if await client.exists(partial):
                    await client.remove_file(partial)
        except (aioftp.StatusCodeError, OSError, TimeoutError, EOFError) as exc:
            log.warning("partial_upload_left", path=partial, reason=str(exc) or repr(exc))

    async def make_parents(self, remote_path: str) -> None:
        """Create the directories above `remote_path` (operator uploads to new places)."""
        parent = str(PurePosixPath(remote_path).parent)

        async def make(client: aioftp.Client) -> None:
            await client.make_directory(parent, parents=True)

        await self._attempt(f"make directory {parent}", make)

    async def list(self, remote_dir: str, recursive: bool = False) -> list[RemoteEntry]:
        """What is in `remote_dir` (for operators; the task path never lists)."""
        entries: list[RemoteEntry] = []

        async def fetch(client: aioftp.Client) -> None:
            entries.clear()  # a retried attempt starts over
            for path, info in await client.list(remote_dir, recursive=recursive):
                size = info.get("size")
                entries.append(
                    RemoteEntry(
                        str(path),
                        info.get("type") == "dir",
                        int(size) if size is not None else None,
                        info.get("modify"),
                    )
                )

        await self._attempt(f"list {remote_dir}", fetch)
        return sorted(entries, key=lambda entry: entry.path)

    async def close(self) -> None:
        """Close every idle connection (in-flight ones close when their transfer ends)."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(client.close_and_wait() for client in idle))
