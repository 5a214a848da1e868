"""Register one batch: probe every video, validate every label, quarantine what is bad.

Nothing is dropped silently: every file of the batch ends as a clip row or a quarantine row
that names the file, the check that failed and why. A clip whose label is bad is still a clip
(it can be captioned); it just never enters train/eval. A video rejected for any reason takes
its label into quarantine with it, so the label is accounted for too.

A clip row names its video by source URL and sha256, never by a local copy: the copy probed
here sits on this node's disk, and the steps after ingest may run on another node (they fetch
the video by URL and check the hash; see `StateStoreResource.video`).

A drive (`drives/<name>.mp4`) is cut into clips by `drive_clipping.DriveClipper`, which stores them
in the state store; each becomes an ordinary clip row whose `source_url` is the stored clip and
whose `drive_*` columns say which drive and which seconds of it (null for uploaded clips). A bad
drive is one quarantine record; a drive's clips are registered and labelled like uploaded clips.

Every registered clip also gets a perceptual signature (`near_duplicates.py`); a clip within
`near_duplicate_bits` of a clip registered before it (any batch) is flagged with that twin and the
distance, and belongs to its twin's near-duplicate group, which `splits` keeps on one side.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from avdag.core.common.labels import canonicalize_label, validate_label
from avdag.core.common.state_store import file_sha256
from avdag.core.ingest.drive_clipping import DriveClip, DriveClipper, DriveRejected
from avdag.core.ingest.landing import BatchListing, LandingZone, is_safe_name
from avdag.core.ingest.near_duplicates import NEAR_DUPLICATE_BITS, SignatureIndex, clip_signature
from avdag.core.ingest.registry import Registration, SignatureRecord
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
    max_drive_duration_s: float = 4 * 3600.0  # a whole drive recording, cut into clips at ingest
    max_drive_size_bytes: int = 64 * 1024**3
    near_duplicate_bits: float | None = NEAR_DUPLICATE_BITS  # None: no signatures, no near-duplicate flags

    def violation(self, probe: VideoProbe, max_duration_s: float | None = None) -> str | None:
        max_duration_s = self.max_duration_s if max_duration_s is None else max_duration_s
        if not self.min_duration_s <= probe.duration_s <= max_duration_s:
            return f"duration {probe.duration_s:.2f}s outside [{self.min_duration_s}, {max_duration_s}]s"
        if not (self.min_width <= probe.width <= self.max_width and self.min_height <= probe.height <= self.max_height):
            return (
                f"resolution {probe.width}x{probe.height} outside "
                f"[{self.min_width}x{self.min_height}, {self.max_width}x{self.max_height}]"
            )
        return None


class Registry(Protocol):
    def register(self, batch: str, clip_id: str, sha256: str, source_url: str) -> Registration: ...

    def signature_record(
        self, batch: str, clip_id: str, sha256: str, signature: Callable[[], str]
    ) -> SignatureRecord: ...

    def record_for(self, sha256: str) -> SignatureRecord | None: ...


class BatchOnlyRegistry:
    """Dedup (exact and near) within one batch only, for callers without the cross-batch registry."""

    def __init__(self) -> None:
        self._by_sha: dict[str, tuple[str, str]] = {}
        self._signatures: dict[str, SignatureRecord] = {}
        self._index = SignatureIndex()

    def register(self, batch: str, clip_id: str, sha256: str, source_url: str) -> Registration:
        first = self._by_sha.setdefault(sha256, (clip_id, batch))
        return Registration("clip" if first == (clip_id, batch) else "duplicate", *first)

    def signature_record(self, batch: str, clip_id: str, sha256: str, signature: Callable[[], str]) -> SignatureRecord:
        if sha256 not in self._signatures:
            value = signature()
            twin = self._index.nearest(value)
            self._signatures[sha256] = SignatureRecord(
                sha256,
                clip_id,
                batch,
                value,
                twin[0] if twin else None,
                self._signatures[twin[0]].clip_id if twin else None,
                round(twin[1], 3) if twin else None,
            )
            self._index.add(sha256, value)
        return self._signatures[sha256]

    def record_for(self, sha256: str) -> SignatureRecord | None:
        return self._signatures.get(sha256)


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
    "drive_id",  # the drive a clip was cut from (drive-<sha256 prefix>); null for uploaded clips
    "drive_url",
    "drive_sha256",
    "drive_start_s",  # where in the drive the clip lies, in seconds
    "drive_end_s",
    "signature",  # perceptual signature (near_duplicates.py); null when signatures are off
    "near_duplicate_of",  # the earlier clip this one is a near-duplicate of, or null
    "near_duplicate_distance",  # their distance in bits (<= the threshold), or null
    "near_duplicate_group",  # the first clip of its near-duplicate chain (itself when not flagged): one split side
)
_NO_DRIVE = dict.fromkeys(("drive_id", "drive_url", "drive_sha256", "drive_start_s", "drive_end_s"))


class _BatchIngest:
    """One pass over a batch listing, collecting clips and quarantine records."""

    def __init__(
        self,
        zone: LandingZone,
        listing: BatchListing,
        cache_dir: Path,
        limits: IngestLimits,
        registry: Registry,
        clipper: DriveClipper | None = None,
    ):
        self.zone, self.listing, self.cache_dir, self.limits, self.registry = zone, listing, cache_dir, limits, registry
        self.clipper = clipper
        self.clips: list[dict[str, Any]] = []
        self.drive_clip_ids: set[str] = set()
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
        self._register(clip_id, url, asdict(probe), _NO_DRIVE, lambda: clip_signature(local))

    def _register(
        self, clip_id: str, url: str, probe: dict[str, Any], drive: dict[str, Any], signature: Callable[[], str]
    ) -> None:
        """A probed clip (uploaded or cut from a drive) becomes a row, unless its content or id is taken."""
        registration = self.registry.register(self.listing.batch, clip_id, probe["sha256"], url)
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
                **probe,
                "label_json": label_json,
                **drive,
                **self._near_duplicate(clip_id, probe["sha256"], signature),
            }
        )

    def _near_duplicate(self, clip_id: str, sha256: str, signature: Callable[[], str]) -> dict[str, Any]:
        """Signature and near-duplicate flag of a registered clip (its twin is the nearest earlier clip)."""
        threshold = self.limits.near_duplicate_bits
        none = {"signature": None, "near_duplicate_of": None, "near_duplicate_distance": None}
        if threshold is None:
            return {**none, "near_duplicate_group": clip_id}
        try:
            record = self.registry.signature_record(self.listing.batch, clip_id, sha256, signature)
        except (VideoError, OSError):  # too few frames to sign: exact dedup only
            return {**none, "near_duplicate_group": clip_id}
        flagged = record.distance is not None and record.distance <= threshold
        return {
            "signature": record.signature,
            "near_duplicate_of": record.twin_clip_id if flagged else None,
            "near_duplicate_distance": record.distance if flagged else None,
            "near_duplicate_group": self._group(record, threshold) if flagged else clip_id,
        }

    def _group(self, record: SignatureRecord, threshold: float) -> str:
        """The first clip of a chain of near-duplicates (each within `threshold` of the one before)."""
        seen = {record.sha256}
        while record.twin_sha256 and record.distance is not None and record.distance <= threshold:
            twin = self.registry.record_for(record.twin_sha256)
            if twin is None or twin.sha256 in seen:
                break
            seen.add(twin.sha256)
            record = twin
        return record.clip_id

    def reject_drive(self, url: str, check: str, reason: str) -> None:
        """A drive is one file: labels name its clips, not the drive, so none go with it."""
        self.quarantine.append(QuarantineRecord(self.listing.batch, url, check, reason))

    def drive(self, name: str, url: str) -> None:
        """Cut one drive into clips (or reuse its stored clips) and register each; a bad drive is quarantined."""
        size = self.listing.sizes.get(url, 0)
        if not is_safe_name(name):
            return self.reject_drive(
                url, "clip_name", f"unsafe drive name {name!r} (letters, digits, '.', '_', '-' only)"
            )
        if size > self.limits.max_drive_size_bytes:
            return self.reject_drive(
                url, "video_size", f"{size} bytes exceeds the {self.limits.max_drive_size_bytes}-byte drive limit"
            )
        manifest_entry = self._manifest_entry(url)
        if self.listing.manifest is not None and manifest_entry is None:
            return self.reject_drive(url, "manifest", "not listed in _MANIFEST.json")
        if manifest_entry and int(manifest_entry.get("size", size)) != size:
            return self.reject_drive(
                url, "manifest", f"size {size} but the manifest says {manifest_entry['size']}: incomplete upload?"
            )
        if self.clipper is None:
            return self.reject_drive(url, "drive_store", "drives need a state store to keep their clips in")
        try:
            local = self.zone.local_copy(url, self.cache_dir)
            sha256 = file_sha256(local)
        except OSError as exc:
            return self.reject_drive(url, "drive_decodable", str(exc))
        if manifest_entry and manifest_entry.get("sha256") and manifest_entry["sha256"] != sha256:
            return self.reject_drive(url, "manifest", f"sha256 {sha256[:12]}… differs from the manifest's")
        try:
            clips = self.clipper.clips(
                local, sha256, url, bounds=lambda probe: self.limits.violation(probe, self.limits.max_drive_duration_s)
            )
        except DriveRejected as exc:
            return self.reject_drive(url, exc.check, f"drive {name}: {exc.reason}")
        for clip in clips:
            self.drive_clip_ids.add(clip.clip_id)
            bounds = self.limits.violation(VideoProbe(**clip.probe))
            if bounds:
                self.reject(clip.clip_id, clip.url, "video_bounds", f"{_where(clip)}: {bounds}")
                continue
            self._register(clip.clip_id, clip.url, clip.probe, _drive_columns(clip), _signed(clip))

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


def _drive_columns(clip: DriveClip) -> dict[str, Any]:
    return {
        "drive_id": clip.drive_id,
        "drive_url": clip.drive_url,
        "drive_sha256": clip.drive_sha256,
        "drive_start_s": clip.drive_start_s,
        "drive_end_s": clip.drive_end_s,
    }


def _signed(clip: DriveClip) -> Callable[[], str]:
    """A drive clip's signature, made when it was cut (the cut file is gone from scratch by now)."""

    def signature() -> str:
        if not clip.signature:
            raise VideoError(clip.url, "no signature recorded when it was cut")
        return clip.signature

    return signature


def _where(clip: DriveClip) -> str:
    return f"{clip.drive_start_s:.2f}-{clip.drive_end_s:.2f}s of drive {clip.drive_url}"


def ingest_batch(
    zone: LandingZone,
    listing: BatchListing,
    cache_dir: Path,
    progress: Callable[[int, int, str], None] | None = None,
    *,
    limits: IngestLimits = IngestLimits(),
    registry: Registry | None = None,
    clipper: DriveClipper | None = None,
) -> tuple[list[dict[str, Any]], list[QuarantineRecord]]:
    """Clip rows (CLIP_COLUMNS) and quarantine records for one batch; `cache_dir` holds the probed copies.

    Drives are cut by `clipper` (which stores their clips); without one a drive is quarantined.
    """
    if clipper is not None:
        clipper.sign = limits.near_duplicate_bits is not None
    run = _BatchIngest(zone, listing, cache_dir, limits, registry or BatchOnlyRegistry(), clipper)
    total = len(listing.videos) + len(listing.drives)
    for i, (clip_id, url) in enumerate(sorted(listing.videos.items()), start=1):
        if progress:
            progress(i, total, clip_id)
        run.video(clip_id, url)
    for i, (name, url) in enumerate(sorted(listing.drives.items()), start=len(listing.videos) + 1):
        if progress:
            progress(i, total, f"drive {name}")
        run.drive(name, url)
    for clip_id, url in sorted(listing.labels.items()):
        if clip_id not in listing.videos and clip_id not in run.drive_clip_ids:
            run.quarantine.append(
                QuarantineRecord(
                    listing.batch, url, "orphan_label", f"no video {clip_id} in videos/ nor a drive clip of that id"
                )
            )
    run.missing_from_manifest()
    return run.clips, run.quarantine
