"""The landing zone: where clip batches arrive, read through fsspec (a local folder or s3://).

Layout (the recipe's dataset layout, one folder per batch):
    <root>/<batch>/videos/<clip_id>.camera_front_wide_120fov.mp4
    <root>/<batch>/metas/<clip_id>.label.json        (only where a human labelled the clip)
    <root>/<batch>/drives/<drive_name>.mp4           (whole drive recordings, cut into clips at ingest)
    <root>/<batch>/_READY  or  <root>/<batch>/_MANIFEST.json   (written last: the batch is complete)
The same code serves a local path and an S3 prefix; only the storage options differ.

Upload contract: a batch is invisible until its marker exists, so a folder still being written
is never half-ingested. `_MANIFEST.json` ({"files": [{"path", "size", "sha256"?}]}) also lets
ingest verify that every listed file arrived whole. Re-writing the marker announces a
re-upload; it is reprocessed only if the batch's content fingerprint (listing metadata: sizes and
ETags or mtimes, or the manifest; never the bytes) changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import fsspec

from avdag.core.common.atomic import atomic_path

VIDEO_SUFFIX = ".camera_front_wide_120fov.mp4"
LABEL_SUFFIX = ".label.json"
DRIVE_SUFFIX = ".mp4"
READY_MARKER = "_READY"
MANIFEST_MARKER = "_MANIFEST.json"
MARKERS = (MANIFEST_MARKER, READY_MARKER)
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_safe_name(name: str) -> bool:
    """Batch and clip names that cannot escape a folder: no separators, no '..', no leading dot."""
    return bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


class ManifestError(ValueError):
    """A batch's _MANIFEST.json cannot be read; the message names the file."""


@dataclass
class BatchListing:
    """What one batch folder holds, sorted into videos, labels and everything else."""

    batch: str
    videos: dict[str, str] = field(default_factory=dict)  # clip id -> URL
    labels: dict[str, str] = field(default_factory=dict)  # clip id -> URL
    drives: dict[str, str] = field(default_factory=dict)  # drive name -> URL
    unrecognized: dict[str, str] = field(default_factory=dict)  # URL -> why it is not a clip or label
    sizes: dict[str, int] = field(default_factory=dict)  # URL -> bytes, as listed
    manifest: dict[str, dict] | None = None  # relative path -> {"size", "sha256"?} when a manifest exists


class LandingZone:
    """Lists batches and their files, and hands out local copies for decoding."""

    def __init__(self, url: str, storage_options: dict | None = None):
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url, **(storage_options or {}))
        self.is_local = self.fs.protocol in ("file", "local") or "file" in self.fs.protocol

    def _url(self, path: str) -> str:
        return path if self.is_local else f"{self._protocol()}://{path}"

    def _protocol(self) -> str:
        proto = self.fs.protocol
        return proto[0] if isinstance(proto, (tuple, list)) else proto

    def list_batches(self) -> list[str]:
        """Batch folder names directly under the root, sorted (one shallow listing; no clip is listed)."""
        try:
            entries = self.fs.ls(self.root, detail=True)
        except FileNotFoundError:
            return []
        names = [Path(e["name"].rstrip("/")).name for e in entries if e.get("type") == "directory"]
        return sorted(n for n in names if is_safe_name(n))

    def marker_signature(self, batch: str, expected: str | None = None) -> str | None:
        """Identity of the batch's completion marker (name, size, ETag or mtime), or None if not ready.

        `expected` (a previous signature) names the marker to try first: one request when it exists.
        """
        hinted = expected.split(":", 1)[0] if expected else None
        for marker in sorted(MARKERS, key=lambda m: m != hinted):
            try:
                info = self.fs.info(f"{self.root}/{batch}/{marker}")
            except FileNotFoundError:
                continue
            stamp = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
            return f"{marker}:{info.get('size')}:{stamp}"
        return None

    def _find(self, batch: str) -> dict[str, dict]:
        """Every object under one batch with its details (a listing of that batch only)."""
        return self.fs.find(f"{self.root}/{batch}", detail=True)

    def batch_fingerprint(self, batch: str) -> str:
        """Content identity of a batch from listing metadata, so a sensor tick never reads a video.

        The manifest's bytes when there is one (it names every file's size and, optionally, hash);
        else every file's path, size and content tag (see `_content_tag`). The content itself is
        hashed by the ingest run, not here: reading a batch's gigabytes on every tick would make the
        tick's cost grow with bytes uploaded, not with batches.
        """
        manifest = f"{self.root}/{batch}/{MANIFEST_MARKER}"
        if self.fs.exists(manifest):
            return hashlib.sha256(self.fs.cat_file(manifest)).hexdigest()
        rows = sorted(
            (path[len(self.root) :], int(info.get("size") or 0), self._content_tag(path, info))
            for path, info in self._find(batch).items()
            if not path.endswith("/" + READY_MARKER)
        )
        return hashlib.sha256(json.dumps(rows).encode()).hexdigest()

    def _content_tag(self, path: str, info: dict) -> str:
        """What changes when an object's bytes change, without reading them.

        S3's ETag (derived from the bytes). Locally the mtime in ns and the inode (a file replaced
        by a rename, as `rsync -t` does, gets a new inode even when it keeps size and mtime), so a
        file re-written with identical bytes counts as changed: its batch is ingested again, which
        is idempotent (ingest hashes and deduplicates by content). Other stores: their own stamp.
        """
        if info.get("ETag"):
            return str(info["ETag"])
        if self.is_local:
            stat = os.stat(path)
            return f"{stat.st_mtime_ns}:{stat.st_ino}"
        for key in ("md5Hash", "generation", "LastModified", "last_modified", "mtime"):
            if info.get(key):
                return str(info[key])
        return ""

    def list_batch(self, batch: str) -> BatchListing:
        if not is_safe_name(batch):
            raise ValueError(f"unsafe batch name {batch!r}")
        listing = BatchListing(batch)
        base = f"{self.root}/{batch}"
        for path, info in sorted(self._find(batch).items()):
            rel = path[len(base) + 1 :]
            name = rel.rsplit("/", 1)[-1]
            url = self._url(path)
            listing.sizes[url] = int(info.get("size") or 0)
            if rel == MANIFEST_MARKER:
                try:
                    listing.manifest = self._read_manifest(path)
                except ManifestError as exc:  # quarantined; the batch goes on unverified
                    listing.unrecognized[url] = str(exc)
            elif rel == f"videos/{name}" and name.endswith(VIDEO_SUFFIX):
                listing.videos[name[: -len(VIDEO_SUFFIX)]] = url
            elif rel == f"metas/{name}" and name.endswith(LABEL_SUFFIX):
                listing.labels[name[: -len(LABEL_SUFFIX)]] = url
            elif rel == f"drives/{name}" and name.endswith(DRIVE_SUFFIX):
                stem = name[: -len(VIDEO_SUFFIX)] if name.endswith(VIDEO_SUFFIX) else name[: -len(DRIVE_SUFFIX)]
                listing.drives[stem] = url
            elif not (rel == name and name.startswith("_")):  # batch-root markers (_READY, _SUCCESS) are not data
                listing.unrecognized[url] = (
                    f"not a <id>{VIDEO_SUFFIX} directly under videos/ nor a <id>{LABEL_SUFFIX} directly under metas/"
                    f" nor a <drive>{DRIVE_SUFFIX} directly under drives/"
                )
        return listing

    def _read_manifest(self, path: str) -> dict[str, dict]:
        """Relative path -> entry; a malformed manifest is an error naming the file."""
        try:
            data = json.loads(self.fs.cat_file(path))
            return {str(PurePosixPath(entry["path"])): entry for entry in data["files"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise ManifestError(
                f'{self._url(path)}: malformed manifest ({exc}); expected {{"files": [{{"path": ..., "size": ...}}]}}'
            ) from exc

    def read_bytes(self, url: str) -> bytes:
        return self.fs.cat_file(url if self.is_local else url.split("://", 1)[1])

    def local_copy(self, url: str, cache_dir: Path) -> Path:
        """A local file for `url`: the file itself when local, else a cached download.

        The cache name is a hash of the URL and the object's ETag, so no object key (spaces, '..',
        absolute paths, unicode) can place a file outside `cache_dir`, and new bytes are never
        shadowed by an old download.
        """
        if self.is_local:
            return Path(url)
        key = url.split("://", 1)[1]
        info = self.fs.info(key)
        size = int(info.get("size") or 0)
        # Keyed by URL and content tag: a re-upload with new bytes (even of the same size) is fetched anew.
        identity = f"{url}\n{info.get('ETag') or info.get('LastModified') or ''}\n{size}"
        digest = hashlib.sha256(identity.encode("utf-8")).hexdigest()
        target = cache_dir / digest[:2] / (digest + PurePosixPath(key).suffix[:16])
        if not (target.exists() and target.stat().st_size == size):
            with atomic_path(target) as tmp:
                self.fs.get_file(key, str(tmp))
        return target

    def upload_batch(self, local_batch_dir: Path, batch: str) -> int:
        """Copy a finished local batch folder into the zone as `batch`, its `_READY` marker last.

        Each object is one upload (atomic on object stores, an atomic rename locally), and the
        marker goes last, so a sensor never sees a partial batch. Returns the files copied.
        """
        if not is_safe_name(batch):
            raise ValueError(f"unsafe batch name {batch!r}")
        files = sorted(p for p in Path(local_batch_dir).rglob("*") if p.is_file() and p.name not in MARKERS)
        for path in files + [Path(local_batch_dir) / READY_MARKER]:
            relative = path.relative_to(local_batch_dir).as_posix()
            target = f"{self.root}/{batch}/{relative}"
            if self.is_local:
                with atomic_path(Path(target)) as tmp:
                    tmp.write_bytes(path.read_bytes() if path.exists() else b"")
            else:
                self.fs.pipe_file(target, path.read_bytes() if path.exists() else b"")
        return len(files)
