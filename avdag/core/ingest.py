"""Register one batch: probe every video, validate every label, quarantine what is bad.

Nothing is dropped silently: every file of the batch ends as a clip row or a quarantine row
that names the file, the check that failed and why. A clip whose label is bad is still a clip
(it can be captioned); it just never enters train/eval.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from avdag.core.labels import canonicalize_label, validate_label
from avdag.core.landing import BatchListing, LandingZone, is_safe_name
from avdag.core.video import VideoError, probe_video


@dataclass(frozen=True)
class QuarantineRecord:
    batch: str
    file: str
    check: str
    reason: str


CLIP_COLUMNS = (
    "clip_id", "batch", "source_url", "local_path", "label_url", "duration_s", "fps", "width", "height",
    "codec", "num_frames", "size_bytes", "sha256", "label_json",
)


def ingest_batch(
    zone: LandingZone,
    listing: BatchListing,
    cache_dir: Path,
    progress: Callable[[int, int, str], None] | None = None,
) -> tuple[list[dict[str, Any]], list[QuarantineRecord]]:
    """Clip rows (CLIP_COLUMNS) and quarantine records for one batch."""
    clips: list[dict[str, Any]] = []
    quarantine = [QuarantineRecord(listing.batch, url, "layout", why) for url, why in listing.unrecognized.items()]
    for i, (clip_id, url) in enumerate(sorted(listing.videos.items()), start=1):
        if progress:
            progress(i, len(listing.videos), clip_id)
        if not is_safe_name(clip_id):
            quarantine.append(QuarantineRecord(listing.batch, url, "clip_name", f"unsafe clip id {clip_id!r}"))
            continue
        try:
            local = zone.local_copy(url, cache_dir)
            probe = probe_video(local)
        except (VideoError, OSError) as exc:
            quarantine.append(QuarantineRecord(listing.batch, url, "video_decodable", str(exc)))
            if clip_id in listing.labels:
                quarantine.append(QuarantineRecord(listing.batch, listing.labels[clip_id], "video_decodable",
                                                   f"its video {clip_id} was quarantined: {exc}"))
            continue
        label_json, label_problem = _load_label(zone, listing.labels.get(clip_id))
        if label_problem:
            quarantine.append(QuarantineRecord(listing.batch, listing.labels[clip_id], *label_problem))
        clips.append(
            {
                "clip_id": clip_id,
                "batch": listing.batch,
                "source_url": url,
                "local_path": str(local),
                "label_url": listing.labels.get(clip_id),
                **asdict(probe),
                "label_json": label_json,
            }
        )
    for clip_id, url in sorted(listing.labels.items()):
        if clip_id not in listing.videos:
            quarantine.append(QuarantineRecord(listing.batch, url, "orphan_label", f"no video {clip_id} in videos/"))
    return clips, quarantine


def _load_label(zone: LandingZone, url: str | None) -> tuple[str | None, tuple[str, str] | None]:
    """(canonical label JSON, None) or (None, (check, reason)); (None, None) when unlabelled."""
    if url is None:
        return None, None
    try:
        label = json.loads(zone.read_bytes(url).decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, ("label_json", f"not valid JSON: {exc}")
    issues = validate_label(label)
    if issues:
        return None, ("label_schema", "; ".join(map(str, issues)))
    return json.dumps(canonicalize_label(label), ensure_ascii=False), None
