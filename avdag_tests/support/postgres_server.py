"""A throwaway Postgres server for tests, from Debian's `postgresql` binaries (installed by `make test`).

    with PostgresServer() as server:
        server.url                          # postgresql://avdag@127.0.0.1:PORT/avdag, an empty database
        url = isolated_schema(server.url)   # the same database, in a new empty schema of its own

`initdb` makes a cluster in a fresh temp folder (trust auth, no fsync: it is thrown away), `pg_ctl`
starts it on a free loopback port with its unix socket in that folder too, and exit stops it and
deletes the folder. A test gets a schema of its own rather than a database: creating one takes a
millisecond, a database a third of a second. Postgres refuses to run as root, so under root the server runs as the
`postgres` user Debian's package creates (or `nobody`), through `runuser`.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg

USER = DATABASE = "avdag"
_INSTALL_HINT = "`make test` installs Debian's postgresql package (its system-packages step)"


class PostgresUnavailable(RuntimeError):
    """No Postgres binaries here, or the server would not start."""


def postgres_bin_dir() -> Path:
    """The folder of `initdb` and `pg_ctl`: Debian keeps them in /usr/lib/postgresql/<version>/bin, off PATH."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("pg_ctl"):
        return Path(os.path.realpath(on_path)).parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if not found:
        raise PostgresUnavailable(
            f"no Postgres server binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql: {_INSTALL_HINT}"
        )
    return Path(found[-1]).parent


class PostgresServer:
    """One server for the life of a `with` block; `url` names its empty database `avdag`."""

    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        self.run_as = _unprivileged_user() if os.geteuid() == 0 else None
        self.folder: Path | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The database `avdag` on this server."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def __enter__(self) -> PostgresServer:
        self.folder = Path(tempfile.mkdtemp(prefix="avdag-pg-"))
        if self.run_as is not None:
            os.chown(self.folder, self.run_as.pw_uid, self.run_as.pw_gid)
        self.port = _free_port()
        data = self.folder / "data"
        try:
            self._pg("initdb", "-D", data, "-U", USER, "--auth=trust", "--no-sync", "-E", "UTF8", "--no-instructions")
            options = (
                f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off -c synchronous_commit=off "
                "-c full_page_writes=off -c max_connections=200"
            )
            self._pg("pg_ctl", "-D", data, "-l", self.folder / "server.log", "-o", options, "-w", "-t", "60", "start")
            with psycopg.connect(f"postgresql://{USER}@127.0.0.1:{self.port}/postgres", autocommit=True) as db:
                db.execute(f"CREATE DATABASE {DATABASE}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        data = self.folder / "data"
        if (data / "postmaster.pid").exists():
            self._pg("pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.folder, ignore_errors=True)

    def _pg(self, program: str, *args: str | Path) -> None:
        command = [str(self.bin / program), *map(str, args)]
        if self.run_as is not None:
            command = ["runuser", "-u", self.run_as.pw_name, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.folder)
        if done.returncode != 0:
            log = self.folder / "server.log"
            tail = log.read_text()[-2000:] if log.exists() else ""
            raise PostgresUnavailable(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr}{tail}")


def isolated_schema(url: str) -> str:
    """`url` with its tables in a new, empty schema (first on the search path): a database of its own, in effect."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(url, autocommit=True) as db:
        db.execute(f"CREATE SCHEMA {name}")
    return f"{url}?options=-csearch_path%3D{name}"


def _unprivileged_user() -> pwd.struct_passwd:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise PostgresUnavailable("running as root, and there is no `postgres` or `nobody` user to run Postgres as")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
