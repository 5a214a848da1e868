"""Register one batch: probe every video, validate every label, quarantine what is bad.

Nothing is dropped silently: every file of the batch ends as a clip row or a quarantine row
that names the file, the check that failed and why. A clip whose label is bad is still a clip
(it can be captioned); it just never enters train/eval. A video rejected for any reason takes
its label into quarantine with it, so the label is accounted for too.

A clip row names its video by source URL and sha256, never by a local copy: the copy probed
here sits on this node's disk, and the steps after ingest may run on another node (they fetch
the video by URL and check the hash; see `StateStoreResource.video`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from avdag.core.common.labels import canonicalize_label, validate_label
from avdag.core.ingest.landing import BatchListing, LandingZone, is_safe_name
from avdag.core.ingest.registry import Registration
from avdag.core.ingest.video import VideoError, VideoProbe, VideoTruncated, probe_video


@dataclass(frozen=True)
class QuarantineRecord:
    batch: str
    file: str
    check: str
    reason: str


@dataclass(frozen=True)
class IngestLimits:
    """Bounds a clip must meet to be worth captioning (configurable per deployment)."""

    min_duration_s: float = 1.0
    max_duration_s: float = 600.0
    min_width: int = 64
    min_height: int = 64
    max_width: int = 7680
    max_height: int = 4320
    max_size_bytes: int = 2 * 1024**3

    def violation(self, probe: VideoProbe) -> str | None:
        if not self.min_duration_s <= probe.duration_s <= self.max_duration_s:
            return f"duration {probe.duration_s:.2f}s outside [{self.min_duration_s}, {self.max_duration_s}]s"
        if not (self.min_width <= probe.width <= self.max_width and self.min_height <= probe.height <= self.max_height):
            return (
                f"resolution {probe.width}x{probe.height} outside "
                f"[{self.min_width}x{self.min_height}, {self.max_width}x{self.max_height}]"
            )
        return None


class Registry(Protocol):
    def register(self, batch: str, clip_id: str, sha256: str, source_url: str) -> Registration: ...


class BatchOnlyRegistry:
    """Dedup within one batch only, for callers without the cross-batch registry."""

    def __init__(self) -> None:
        self._by_sha: dict[str, tuple[str, str]] = {}

    def register(self, batch: str, clip_id: str, sha256: str, source_url: str) -> Registration:
        first = self._by_sha.setdefault(sha256, (clip_id, batch))
        return Registration("clip" if first == (clip_id, batch) else "duplicate", *first)


CLIP_COLUMNS = (
    "clip_id",
    "batch",
    "source_url",
    "label_url",
    "duration_s",
    "fps",
    "width",
    "height",
    "codec",
    "num_frames",
    "size_bytes",
    "sha256",
    "label_json",
)


class _BatchIngest:
    """One pass over a batch listing, collecting clips and quarantine records."""

    def __init__(
        self, zone: LandingZone, listing: BatchListing, cache_dir: Path, limits: IngestLimits, registry: Registry
    ):
        self.zone, self.listing, self.cache_dir, self.limits, self.registry = zone, listing, cache_dir, limits, registry
        self.clips: list[dict[str, Any]] = []
        self.quarantine = [
            QuarantineRecord(listing.batch, url, "layout", why) for url, why in listing.unrecognized.items()
        ]

    def reject(self, clip_id: str, url: str, check: str, reason: str) -> None:
        self.quarantine.append(QuarantineRecord(self.listing.batch, url, check, reason))
        label = self.listing.labels.get(clip_id)
        if label:
            self.quarantine.append(
                QuarantineRecord(self.listing.batch, label, check, f"its video {clip_id} was quarantined: {reason}")
            )

    def video(self, clip_id: str, url: str) -> None:
        size = self.listing.sizes.get(url, 0)
        if not is_safe_name(clip_id):
            return self.reject(
                clip_id, url, "clip_name", f"unsafe clip id {clip_id!r} (letters, digits, '.', '_', '-' only)"
            )
        if size > self.limits.max_size_bytes:
            return self.reject(
                clip_id, url, "video_size", f"{size} bytes exceeds the {self.limits.max_size_bytes}-byte limit"
            )
        manifest_entry = self._manifest_entry(url)
        if self.listing.manifest is not None:
            if manifest_entry is None:
                return self.reject(clip_id, url, "manifest", "not listed in _MANIFEST.json")
            if int(manifest_entry.get("size", size)) != size:
                return self.reject(
                    clip_id,
                    url,
                    "manifest",
                    f"size {size} but the manifest says {manifest_entry['size']}: incomplete upload?",
                )
        try:
            local = self.zone.local_copy(url, self.cache_dir)
            probe = probe_video(local)
        except VideoTruncated as exc:  # decodes, but holds less footage than declared (a cut-off upload)
            return self.reject(clip_id, url, "truncated", str(exc))
        except (VideoError, OSError) as exc:
            return self.reject(clip_id, url, "video_decodable", str(exc))
        bounds = self.limits.violation(probe)
        if bounds:
            return self.reject(clip_id, url, "video_bounds", bounds)
        if manifest_entry and manifest_entry.get("sha256") and manifest_entry["sha256"] != probe.sha256:
            return self.reject(clip_id, url, "manifest", f"sha256 {probe.sha256[:12]}… differs from the manifest's")
        registration = self.registry.register(self.listing.batch, clip_id, probe.sha256, url)
        if registration.status == "duplicate":
            return self.reject(
                clip_id,
                url,
                "duplicate",
                f"same content as clip {registration.clip_id} of batch {registration.batch}; "
                "recorded as another source",
            )
        if registration.status == "id_conflict":
            return self.reject(
                clip_id,
                url,
                "clip_id_conflict",
                f"clip id {clip_id} already names different content in batch {registration.batch}",
            )
        label_json = self._label(clip_id)
        self.clips.append(
            {
                "clip_id": clip_id,
                "batch": self.listing.batch,
                "source_url": url,
                "label_url": self.listing.labels.get(clip_id),
                **asdict(probe),
                "label_json": label_json,
            }
        )

    def _manifest_entry(self, url: str) -> dict | None:
        if not self.listing.manifest:
            return None
        for rel, entry in self.listing.manifest.items():
            if url.endswith("/" + rel):
                return entry
        return None

    def _label(self, clip_id: str) -> str | None:
        url = self.listing.labels.get(clip_id)
        if url is None:
            return None
        try:
            label = json.loads(self.zone.read_bytes(url).decode("utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            self.quarantine.append(QuarantineRecord(self.listing.batch, url, "label_json", f"not valid JSON: {exc}"))
            return None
        issues = validate_label(label)
        if issues:
            self.quarantine.append(
                QuarantineRecord(self.listing.batch, url, "label_schema", "; ".join(map(str, issues)))
            )
            return None
        return json.dumps(canonicalize_label(label), ensure_ascii=False)

    def missing_from_manifest(self) -> None:
        """Files the manifest promises that never arrived."""
        present = set(self.listing.sizes)
        for rel in sorted(self.listing.manifest or {}):
            if not any(url.endswith("/" + rel) for url in present):
                self.quarantine.append(
                    QuarantineRecord(self.listing.batch, rel, "manifest", "listed in _MANIFEST.json but missing")
                )


def ingest_batch(
    zone: LandingZone,
    listing: BatchListing,
    cache_dir: Path,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    limits: IngestLimits = IngestLimits(),
    registry: Registry | None = None,
) -> tuple[list[dict[str, Any]], list[QuarantineRecord]]:
    """Clip rows (CLIP_COLUMNS) and quarantine records for one batch; `cache_dir` holds the probed copies."""
    run = _BatchIngest(zone, listing, cache_dir, limits, registry or BatchOnlyRegistry())
    for i, (clip_id, url) in enumerate(sorted(listing.videos.items()), start=1):
        if progress:
            progress(i, len(listing.videos), clip_id)
        run.video(clip_id, url)
    for clip_id, url in sorted(listing.labels.items()):
        if clip_id not in listing.videos:
            run.quarantine.append(
                QuarantineRecord(listing.batch, url, "orphan_label", f"no video {clip_id} in videos/")
            )
    run.missing_from_manifest()
    return run.clips, run.quarantine
