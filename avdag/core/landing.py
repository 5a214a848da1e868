"""The landing zone: where clip batches arrive, read through fsspec (a local folder or s3://).

Layout (the recipe's dataset layout, one folder per batch):
    <root>/<batch>/videos/<clip_id>.camera_front_wide_120fov.mp4
    <root>/<batch>/metas/<clip_id>.label.json        (only where a human labelled the clip)
The same code serves a local path and an S3 prefix; only the storage options differ.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import fsspec

from avdag.core.atomic import atomic_path

VIDEO_SUFFIX = ".camera_front_wide_120fov.mp4"
LABEL_SUFFIX = ".label.json"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def is_safe_name(name: str) -> bool:
    """Batch and clip names that cannot escape a folder: no separators, no '..', no leading dot."""
    return bool(_SAFE_NAME.fullmatch(name)) and ".." not in name


@dataclass(frozen=True)
class BatchListing:
    batch: str
    videos: dict[str, str] = field(default_factory=dict)  # clip id -> URL
    labels: dict[str, str] = field(default_factory=dict)  # clip id -> URL
    unrecognized: dict[str, str] = field(default_factory=dict)  # URL -> why it is not a clip or label


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
        """Batch folder names directly under the root, sorted."""
        if not self.fs.exists(self.root):
            return []
        names = [Path(p.rstrip("/")).name for p in self.fs.ls(self.root, detail=False) if self.fs.isdir(p)]
        return sorted(n for n in names if is_safe_name(n))

    def list_batch(self, batch: str) -> BatchListing:
        if not is_safe_name(batch):
            raise ValueError(f"unsafe batch name {batch!r}")
        listing = BatchListing(batch)
        base = f"{self.root}/{batch}"
        for path in sorted(self.fs.find(base)):
            rel = path[len(base) + 1 :]
            name = rel.rsplit("/", 1)[-1]
            url = self._url(path)
            if rel == f"videos/{name}" and name.endswith(VIDEO_SUFFIX):
                listing.videos[name[: -len(VIDEO_SUFFIX)]] = url
            elif rel == f"metas/{name}" and name.endswith(LABEL_SUFFIX):
                listing.labels[name[: -len(LABEL_SUFFIX)]] = url
            elif not name.startswith("_"):  # markers such as _READY are not data
                listing.unrecognized[url] = f"not a <id>{VIDEO_SUFFIX} under videos/ nor a <id>{LABEL_SUFFIX} under metas/"
        return listing

    def read_bytes(self, url: str) -> bytes:
        return self.fs.cat_file(url if self.is_local else url.split("://", 1)[1])

    def local_copy(self, url: str, cache_dir: Path) -> Path:
        """A local file for `url`: the file itself when local, else a cached download."""
        if self.is_local:
            return Path(url)
        key = url.split("://", 1)[1]
        target = cache_dir / key
        size = self.fs.size(key)
        if not (target.exists() and target.stat().st_size == size):
            with atomic_path(target) as tmp:
                self.fs.get_file(key, str(tmp))
        return target
