"""A throwaway Redis server for tests (the Celery broker), from Debian's `redis-server` (installed by `make test`).

    with RedisServer() as server:
        server.url      # redis://127.0.0.1:PORT/0, an empty database
        server.client() # a redis-py client on it

`redis-server` runs on a free loopback port with its working folder in a fresh temp folder, no persistence
(nothing is written to disk: it is thrown away) and no protected mode; exit stops it and deletes the folder.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

_INSTALL_HINT = "`make test` installs Debian's redis-server package (its system-packages step)"


class RedisUnavailable(RuntimeError):
    """No `redis-server` here, or it would not start."""


def redis_server_binary() -> str:
    """`redis-server` on PATH, or a failure saying how to get it."""
    found = shutil.which("redis-server")
    if not found:
        raise RedisUnavailable(f"no redis-server on PATH: {_INSTALL_HINT}")
    return found


class RedisServer:
    """One server for the life of a `with` block."""

    def __init__(self) -> None:
        self.binary = redis_server_binary()
        self.folder: Path | None = None
        self.port = 0
        self._process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def __enter__(self) -> RedisServer:
        self.folder = Path(tempfile.mkdtemp(prefix="avdag-redis-"))
        self.port = _free_port()
        log = self.folder / "server.log"
        args = ["--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder), "--logfile", str(log)]
        args += ["--save", "", "--appendonly", "no", "--protected-mode", "no", "--daemonize", "no"]
        self._process = subprocess.Popen([self.binary, *args], cwd=self.folder, stdin=subprocess.DEVNULL)
        try:
            self._wait_ready(log)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_ready(self, log: Path, timeout_s: float = 30) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RedisUnavailable(f"redis-server exited with {self._process.returncode}:\n{_tail(log)}")
            try:
                if self.client().ping():
                    return
            except redis.ConnectionError:  # not listening yet
                time.sleep(0.1)
        raise RedisUnavailable(
            f"redis-server did not answer on port {self.port} within {timeout_s:.0f}s:\n{_tail(log)}"
        )

    def __exit__(self, *exc) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._process = None
        shutil.rmtree(self.folder, ignore_errors=True)


def _tail(path: Path, chars: int = 2000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "<no log>"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
