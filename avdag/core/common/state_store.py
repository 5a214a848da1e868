"""Everything that outlives a step lives in one store: AVDAG_STATE_URL, a local folder or s3://bucket/prefix.

A step on any node reads and writes it through `StateStore`. What a step needs on local disk (a
model folder, the catalog, a clip's video) it fetches into node-local scratch, where each copy is
checked against the content it stands for: a folder against its marker's manifest, a file against
its object's ETag, a video against its registered sha256. A second step on the same node reuses
the copy; a changed object is never shadowed by an old one. On the local default the store *is*
a local folder: fetches hand out the stored file itself and nothing is copied.

Atomicity: locally a write is a temp file renamed into place (`atomic.py`); on object storage a
write is one upload, atomic already. A folder (a checkpoint, the tiny model) is complete only once
its `_COMPLETE` marker exists, and the marker is written last. A marker written by `put_folder`
lists every file with its size and sha256, so a fetch verifies what it downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from avdag.core.common.atomic import atomic_directory, atomic_path, write_bytes_atomic
from avdag.core.common.locks import COMPLETE_MARKER, build_once, file_lock, is_complete

_CHUNK_BYTES = 1024 * 1024


class ContentMismatchError(ValueError):
    """Fetched bytes differ from the content they were recorded as; the message names the object."""


def storage_options(url: str, s3_endpoint_url: str | None = None) -> dict[str, Any]:
    """fsspec options for `url`: on s3://, the endpoint, and no listing cache.

    A directory listing s3fs cached before another process wrote would hide that write from
    `exists` and `find`; every state read must see what the bucket holds now.
    """
    if not url.startswith("s3://"):
        return {}
    options: dict[str, Any] = {"use_listings_cache": False}
    if s3_endpoint_url:
        options["client_kwargs"] = {"endpoint_url": s3_endpoint_url}
    return options


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, streamed so multi-GB recordings never sit in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def folder_manifest(folder: str | Path) -> dict[str, Any]:
    """{"files": {relative path: {"size", "sha256"}}} of a folder; hidden files (caches) and the marker left out."""
    folder = Path(folder)
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if relative.as_posix() == COMPLETE_MARKER or any(part.startswith(".") for part in relative.parts):
            continue
        files[relative.as_posix()] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return {"files": files}


def fetch_verified(url: str, sha256: str, scratch: str | Path, options: dict[str, Any] | None = None) -> Path:
    """A local file with the bytes of `url`, checked against the sha256 recorded for it (a clip's video).

    A local `url` is the file itself (hashed, not copied). Anything else is downloaded once per
    node into `<scratch>/content/`, named by the hash, so every step on the node shares the copy.
    """
    fs, path = fsspec.core.url_to_fs(url, **(options or {}))
    if isinstance(fs, LocalFileSystem):
        _check_sha256(Path(path), sha256, url)
        return Path(path)
    target = Path(scratch) / "content" / sha256[:2] / (sha256 + PurePosixPath(path).suffix[:16])
    if target.is_file():  # written only after its hash matched
        return target
    with atomic_path(target) as tmp:
        fs.get_file(path, str(tmp))
        _check_sha256(tmp, sha256, url)
    return target


def _check_sha256(path: Path, expected: str, source: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise ContentMismatchError(f"{source}: sha256 {actual[:12]}… but {expected[:12]}… was recorded for it")


class StateStore:
    """Keys ('assets/raw_clips/b1.parquet', 'checkpoints/sft-…') under one root URL, local or s3://."""

    def __init__(self, url: str, options: dict[str, Any] | None = None):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(options or {}))
        self.root = self.root.rstrip("/")
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self._scheme = "" if self.is_local else self.url.split("://", 1)[0]

    # --- names ------------------------------------------------------------------------------------

    def _path(self, key: str) -> str:
        parts = PurePosixPath(key).parts
        if not parts or key.startswith("/") or ".." in parts:
            raise ValueError(f"{key!r} is not a key inside the state store")
        return f"{self.root}/{key}"

    def uri(self, key: str) -> str:
        """Where `key` lives, as a person or another tool names it: a local path or s3://bucket/prefix/key."""
        path = self._path(key)
        return path if self.is_local else f"{self._scheme}://{path}"

    def key_of(self, uri: str) -> str | None:
        """The key a `uri` of this store names; None for anything outside it (a hub id, another folder)."""
        prefix = f"{self.root}/" if self.is_local else f"{self._scheme}://{self.root}/"
        return uri[len(prefix) :].rstrip("/") if uri.startswith(prefix) else None

    def local_path(self, key: str) -> Path | None:
        """The stored file or folder itself when the store is a local folder (nothing to copy); None on s3."""
        return Path(self._path(key)) if self.is_local else None

    def scratch_path(self, key: str, scratch: str | Path) -> Path:
        """Where this node keeps its copy of `key`: the stored folder itself on a local store."""
        local = self.local_path(key)
        if local is not None:
            return local
        store_id = hashlib.sha256(self.url.encode()).hexdigest()[:12]
        return Path(scratch) / "state" / store_id / key

    # --- files ------------------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        return self.fs.exists(self._path(key))

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.fs.cat_file(self._path(key))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(key)} does not exist") from None

    def read_json(self, key: str) -> Any:
        return json.loads(self.read_bytes(key).decode("utf-8"))

    def read_many(self, keys: Iterable[str]) -> dict[str, bytes]:
        """The bytes of every key that exists, absent ones left out (concurrent requests on object storage)."""
        by_path = {self._path(key): key for key in keys}
        if not by_path:
            return {}
        found = self.fs.cat(list(by_path), on_error="omit")
        return {by_path[path]: data for path, data in found.items() if path in by_path}

    def write_bytes(self, key: str, data: bytes) -> None:
        """One atomic write: a temp file renamed into place, or one upload."""
        local = self.local_path(key)
        if local is not None:
            write_bytes_atomic(local, data)
        else:
            self.fs.pipe_file(self._path(key), data)

    def write_json(self, key: str, value: Any) -> None:
        self.write_bytes(key, (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))

    def list(self, prefix: str) -> list[str]:
        """Keys of the files under `prefix`, sorted; [] when there are none."""
        start = len(self.root) + 1
        return sorted(path[start:] for path in self.fs.find(self._path(prefix)))

    def fetch(self, key: str, scratch: str | Path) -> Path:
        """A local file with `key`'s bytes: the stored file on a local store, else a scratch copy named by its ETag."""
        local = self.local_path(key)
        if local is not None:
            if not local.is_file():
                raise FileNotFoundError(f"{local} does not exist")
            return local
        try:
            info = self.fs.info(self._path(key))
        except FileNotFoundError:
            raise FileNotFoundError(f"{self.uri(key)} does not exist") from None
        identity = json.dumps([self.uri(key), info.get("ETag"), info.get("size")])
        digest = hashlib.sha256(identity.encode()).hexdigest()
        target = Path(scratch) / "files" / digest[:2] / (digest + PurePosixPath(key).suffix[:16])
        if not target.is_file():
            with atomic_path(target) as tmp:
                self.fs.get_file(self._path(key), str(tmp))
        return target

    # --- folders ----------------------------------------------------------------------------------

    def is_complete(self, key: str) -> bool:
        return self.exists(f"{key}/{COMPLETE_MARKER}")

    def put_folder(self, local_dir: str | Path, key: str) -> dict[str, Any]:
        """Store a finished local folder as `key`: every file first, the marker (its manifest) last.

        The local folder gets the same marker, so it is a complete copy of `key` from then on; on a
        local store a folder already in place only gets its marker. Returns the manifest.
        """
        local_dir = Path(local_dir)
        manifest = folder_manifest(local_dir)
        marker = json.dumps(manifest, indent=1, sort_keys=True).encode("utf-8")
        target = self.local_path(key)
        if target is None:
            for relative in manifest["files"]:
                self.fs.put_file(str(local_dir / relative), self._path(f"{key}/{relative}"))
            self.fs.pipe_file(self._path(f"{key}/{COMPLETE_MARKER}"), marker)
        elif target.resolve() != local_dir.resolve():
            with atomic_directory(target) as staging:
                for relative in manifest["files"]:
                    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(local_dir / relative, staging / relative)
                (staging / COMPLETE_MARKER).write_bytes(marker)
            return manifest
        write_bytes_atomic(local_dir / COMPLETE_MARKER, marker)
        return manifest

    def fetch_folder(self, key: str, scratch: str | Path) -> Path:
        """A local copy of the complete folder `key`: the folder itself on a local store, else in scratch.

        The scratch copy is reused while its marker equals the stored one; otherwise every file the
        marker lists is downloaded, its size and sha256 checked, and the copy replaced in one rename.
        """
        local = self.local_path(key)
        if local is not None:
            if not is_complete(local):
                raise FileNotFoundError(f"{local} is not a complete folder: it has no {COMPLETE_MARKER} marker")
            return local
        try:
            marker = self.read_bytes(f"{key}/{COMPLETE_MARKER}")
        except FileNotFoundError:
            raise FileNotFoundError(
                f"{self.uri(key)} is not a complete folder: it has no {COMPLETE_MARKER} marker"
            ) from None
        target = self.scratch_path(key, scratch)
        if _marker_of(target) == marker:
            return target
        with file_lock(target):
            if _marker_of(target) != marker:
                self._download_folder(key, json.loads(marker), marker, target)
        return target

    def _download_folder(self, key: str, manifest: dict[str, Any], marker: bytes, target: Path) -> None:
        with atomic_directory(target) as staging:
            for relative, entry in manifest["files"].items():
                destination = staging / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get_file(self._path(f"{key}/{relative}"), str(destination))
                if destination.stat().st_size != entry["size"]:
                    raise ContentMismatchError(
                        f"{self.uri(f'{key}/{relative}')}: {destination.stat().st_size} bytes, "
                        f"its folder's marker says {entry['size']}"
                    )
                _check_sha256(destination, entry["sha256"], self.uri(f"{key}/{relative}"))
            (staging / COMPLETE_MARKER).write_bytes(marker)

    def publish_folder(self, key: str, build: Callable[[Path], Any], scratch: str | Path) -> Path:
        """A local copy of the complete folder `key`, built here by `build(staging)` and stored if none exists yet.

        The build runs once per node (`build_once` in scratch, or in the local store itself); on
        object storage the result is then uploaded, marker last. Two nodes racing both build and
        upload the same key; a reader sees one complete marker either way.
        """
        if not self.is_local and self.is_complete(key):
            return self.fetch_folder(key, scratch)
        folder = self.scratch_path(key, scratch)
        build_once(folder, build, on_reuse=lambda path: None)
        if not self.is_local and not self.is_complete(key):
            self.put_folder(folder, key)
        return folder


def _marker_of(folder: Path) -> bytes | None:
    try:
        return (folder / COMPLETE_MARKER).read_bytes()
    except OSError:
        return None
