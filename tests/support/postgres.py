"""A private PostgreSQL cluster for the tracker's tests, from the Debian packages.

`postgres` refuses to run as root, so when the tests run as root the cluster belongs to
`nobody` (via setpriv), in a temporary directory that user owns, on a free loopback port.
It is started once per session and stopped at teardown; each test gets a database of its own.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.ports import steady_port

PG_BIN = Path(os.environ.get("ULOS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "tracker"


@dataclass(frozen=True)
class Postgres:
    port: int
    home: Path

    def url(self, database: str) -> str:
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        """A new empty database; its URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        subprocess.run(
            [PG_BIN / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", PG_USER, name],
            check=True,
            capture_output=True,
        )
        return self.url(name)

    def pg_ctl(self, *args: str) -> None:
        _run_as_owner([str(PG_BIN / "pg_ctl"), *args])

    def start(self) -> None:
        options = f"-p {self.port} -k {self.home} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.home / "log")
        self.pg_ctl("-D", str(self.home / "data"), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self.pg_ctl("-D", str(self.home / "data"), "-m", "fast", "-w", "stop")


_OWNER: list[str] = []


def _run_as_owner(command: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([*_OWNER, *command], check=True, capture_output=True, timeout=60)


def start_postgres() -> Iterator[Postgres]:
    """Start a cluster; yields it, then stops it and removes its files."""
    if not (PG_BIN / "initdb").exists():
        raise RuntimeError(
            f"PostgreSQL is not installed ({PG_BIN}/initdb is missing): scripts/test installs "
            "it with apt-get install postgresql"
        )
    home = Path(tempfile.mkdtemp(prefix="ulos-pg-"))
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        _OWNER[:] = [
            "setpriv",
            f"--reuid={nobody.pw_uid}",
            f"--regid={nobody.pw_gid}",
            "--clear-groups",
        ]
    data, port = home / "data", steady_port()
    _run_as_owner(
        [str(PG_BIN / "initdb"), "-D", str(data), "-U", PG_USER, "--auth=trust", "-E", "UTF8"]
    )
    server = Postgres(port, home)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
