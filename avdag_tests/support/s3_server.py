"""A loopback S3 for tests: moto's server mode on 127.0.0.1, driven through s3fs.

    with LoopbackS3() as s3:
        s3.make_bucket("landing-bucket")
        s3.upload_dir(batch_dir, "landing-bucket/landing/batch-1")
        zone = LandingZone("s3://landing-bucket/landing", s3.storage_options())

The `s3` fixture in `avdag_tests/conftest.py` starts one per test module.

Listing caches: s3fs keeps every directory listing it makes (`dircache`) and, by default, fsspec
hands back one shared `S3FileSystem` instance per set of options. A listing made before an upload
is then served again after it: `ls` misses new batch folders and `info` says a freshly written
`_READY` does not exist or still has its old ETag. So every filesystem made here, and the storage
options handed to `LandingZone`, disable both (`skip_instance_cache=True`,
`use_listings_cache=False`): each test sees what the bucket holds right now.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
# Variables that would point boto at a real account or another endpoint; hidden while the server runs.
_HIDDEN = ("AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3")


class LoopbackS3:
    """moto's ThreadedMotoServer on a free loopback port, with dummy credentials in os.environ."""

    def __init__(self) -> None:
        self._server = None
        self._saved_env: dict[str, str | None] = {}
        self.endpoint_url: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> LoopbackS3:
        from moto.server import ThreadedMotoServer

        for name in (*_CREDENTIALS, *_HIDDEN, "NO_PROXY", "no_proxy"):
            self._saved_env[name] = os.environ.get(name)
        os.environ.update(_CREDENTIALS)
        for name in _HIDDEN:
            os.environ.pop(name, None)
        for name in ("NO_PROXY", "no_proxy"):  # botocore honours proxy variables; loopback must bypass them
            os.environ[name] = ",".join(filter(None, [os.environ.get(name), "127.0.0.1", "localhost"]))
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access-log line per request otherwise
        try:
            self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
            self._server.start()
            host, port = self._server.get_host_and_port()
        except BaseException:
            self._restore_env()
            raise
        self.endpoint_url = f"http://{host}:{port}"
        self.reset()
        return self

    def reset(self) -> None:
        """Empty every bucket: moto keeps its state per process, not per server."""
        import urllib.request

        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never via a proxy
        opener.open(urllib.request.Request(f"{self.endpoint_url}/moto-api/reset", method="POST"), timeout=30).close()

    def stop(self) -> None:
        try:
            if self._server is not None:
                self._server.stop()
        finally:
            self._server = None
            self._restore_env()

    def _restore_env(self) -> None:
        for name, value in self._saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_env = {}

    def __enter__(self) -> LoopbackS3:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- clients ------------------------------------------------------------------------------

    def storage_options(self) -> dict:
        """fsspec/s3fs options for this server, with instance and listing caches off (see module doc)."""
        if self.endpoint_url is None:
            raise RuntimeError("LoopbackS3 is not started")
        return {
            "client_kwargs": {"endpoint_url": self.endpoint_url},
            "skip_instance_cache": True,
            "use_listings_cache": False,
        }

    def fs(self):
        """A fresh s3fs filesystem on this server (no shared instance, no listing cache)."""
        import s3fs

        return s3fs.S3FileSystem(**self.storage_options())

    # --- contents -----------------------------------------------------------------------------

    def make_bucket(self, name: str) -> str:
        fs = self.fs()
        if not fs.exists(name):
            fs.mkdir(name)
        return name

    def put(self, key: str, data: bytes) -> str:
        """Write one object; `key` is "bucket/path/inside" (an "s3://" prefix is accepted).

        The key is sent as written: '..' segments, spaces and unicode reach the server verbatim.
        """
        key = key.removeprefix("s3://")
        self.fs().pipe_file(key, data)
        return key

    def upload_dir(self, local_dir: str | Path, prefix: str, *, markers: bool = True) -> list[str]:
        """Upload every file under `local_dir` to "bucket/prefix/<relative path>"; returns the keys.

        Files starting with '_' directly in `local_dir` (completion markers such as _READY) are
        uploaded last, as a real uploader would, or left out with `markers=False`.
        """
        local_dir = Path(local_dir)
        prefix = prefix.removeprefix("s3://").rstrip("/")
        is_marker = lambda p: p.parent == local_dir and p.name.startswith("_")  # noqa: E731
        files = sorted(p for p in local_dir.rglob("*") if p.is_file() and (markers or not is_marker(p)))
        files.sort(key=is_marker)
        fs = self.fs()
        keys = []
        for path in files:
            key = f"{prefix}/{path.relative_to(local_dir).as_posix()}"
            fs.pipe_file(key, path.read_bytes())
            keys.append(key)
        return keys
