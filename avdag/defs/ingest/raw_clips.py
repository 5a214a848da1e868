"""raw_clips: register one batch of the landing zone; bad files go to clip_quarantine."""

import dagster as dg
import pandas as pd
from pydantic import Field

from avdag.core.ingest.drive_clipping import ClippingConfig, DriveClipper
from avdag.core.ingest.upload_batch import CLIP_COLUMNS, IngestLimits, QuarantineRecord, ingest_batch
from avdag.defs.pipeline.partitions import clip_batches
from avdag.resources.registry import ClipRegistryResource
from avdag.resources.storage import LandingZoneResource, StateStoreResource

_DEFAULT_LIMITS = IngestLimits()
_DEFAULT_CLIPPING = ClippingConfig()


class IngestConfig(dg.Config):
    """Bounds a clip (and a drive) must meet, else quarantine with the reason; how drives are cut into clips."""

    min_duration_s: float = Field(default=_DEFAULT_LIMITS.min_duration_s)
    max_duration_s: float = Field(default=_DEFAULT_LIMITS.max_duration_s)
    min_width: int = _DEFAULT_LIMITS.min_width
    min_height: int = _DEFAULT_LIMITS.min_height
    max_width: int = _DEFAULT_LIMITS.max_width
    max_height: int = _DEFAULT_LIMITS.max_height
    max_size_bytes: int = _DEFAULT_LIMITS.max_size_bytes
    max_drive_duration_s: float = Field(
        default=_DEFAULT_LIMITS.max_drive_duration_s, description="Longest drive recording (drives/*.mp4) accepted."
    )
    max_drive_size_bytes: int = _DEFAULT_LIMITS.max_drive_size_bytes
    near_duplicate_bits: float | None = Field(
        default=_DEFAULT_LIMITS.near_duplicate_bits,
        description="Signature distance (bits, 0-64) at or below which a clip is flagged as a near-duplicate of an "
        "earlier one and split with it; null turns signatures off.",
    )
    clip_s: int = Field(default=_DEFAULT_CLIPPING.clip_s, description="Length of the clips a drive is cut into.")
    min_tail_s: float = Field(
        default=_DEFAULT_CLIPPING.min_tail_s, description="A drive's last piece shorter than this is merged or dropped."
    )
    tail: str = Field(default=_DEFAULT_CLIPPING.tail, description="'merge' (into the clip before) or 'drop'.")
    keyframe_tolerance_s: float = Field(
        default=_DEFAULT_CLIPPING.keyframe_tolerance_s,
        description="How far a cut may move to a keyframe, so the clip is a stream copy instead of a re-encode.",
    )
    stream_copy: bool = _DEFAULT_CLIPPING.stream_copy
    reencode_crf: int = _DEFAULT_CLIPPING.crf
    reencode_preset: str = _DEFAULT_CLIPPING.preset

    def limits(self) -> IngestLimits:
        return IngestLimits(**{k: v for k, v in self.model_dump().items() if k in IngestLimits.__dataclass_fields__})

    def clipping(self) -> ClippingConfig:
        return ClippingConfig(
            clip_s=self.clip_s,
            min_tail_s=self.min_tail_s,
            tail=self.tail,
            keyframe_tolerance_s=self.keyframe_tolerance_s,
            stream_copy=self.stream_copy,
            crf=self.reencode_crf,
            preset=self.reencode_preset,
        )


QUARANTINE_COLUMNS = list(QuarantineRecord.__dataclass_fields__)


@dg.multi_asset(
    outs={
        "raw_clips": dg.AssetOut(
            io_manager_key="parquet_io",
            kinds={"video", "parquet"},
            description="One row per decodable clip: probe, hash, label.",
        ),
        "clip_quarantine": dg.AssetOut(
            io_manager_key="parquet_io", kinds={"parquet"}, description="Every rejected file with the check and reason."
        ),
    },
    partitions_def=clip_batches,
    group_name="ingest",
)
def raw_clips(
    context: dg.AssetExecutionContext,
    config: IngestConfig,
    landing_zone: LandingZoneResource,
    clip_registry: ClipRegistryResource,
    state: StateStoreResource,
):
    """Probe and validate one batch, cutting its drives into clips; deduplicate by content across all batches."""
    zone = landing_zone.zone()
    batch = context.partition_key
    if zone.marker_signature(batch) is None:
        raise dg.Failure(f"batch {batch} in {zone.url} is not ready: it has no _READY or _MANIFEST.json marker yet")
    listing = zone.list_batch(batch)
    clipper = DriveClipper(state.store(), state.scratch(), config.clipping())
    clips, quarantine = ingest_batch(
        zone,
        listing,
        state.scratch() / "landing",
        progress=lambda i, n, cid: context.log.debug(f"probing {i}/{n} {cid}"),
        limits=config.limits(),
        registry=clip_registry.registry(),
        clipper=clipper,
    )
    for record in quarantine:
        context.log.warning(f"quarantined {record.file}: {record.check}: {record.reason}")
    clips_df = pd.DataFrame(clips, columns=list(CLIP_COLUMNS))
    quarantine_df = pd.DataFrame([vars(r) for r in quarantine], columns=QUARANTINE_COLUMNS)
    yield dg.Output(
        clips_df,
        output_name="raw_clips",
        metadata={
            "clips": len(clips_df),
            "labelled": int(clips_df["label_json"].notna().sum()),
            "near_duplicates": int(clips_df["near_duplicate_of"].notna().sum()),
            "total_duration_s": float(clips_df["duration_s"].sum()),
            "source": dg.MetadataValue.text(zone.url),
            **_drive_metadata(clipper, clips_df),
        },
    )
    yield dg.Output(
        quarantine_df,
        output_name="clip_quarantine",
        metadata={
            "quarantined": len(quarantine_df),
            **{f"quarantined_{check}": int(n) for check, n in quarantine_df["check"].value_counts().items()},
            "preview": dg.MetadataValue.md(
                quarantine_df.to_markdown(index=False) if len(quarantine_df) else "nothing quarantined"
            ),
        },
    )


def _drive_metadata(clipper: DriveClipper, clips: pd.DataFrame) -> dict:
    """What drive clipping did in this run: cut or reused, copied or re-encoded, how fast."""
    stats = clipper.stats
    if not (stats.drives_cut or stats.drives_reused):
        return {}
    return {
        "drive_clips": int(clips["drive_id"].notna().sum()),
        "drives_cut": stats.drives_cut,
        "drives_reused": stats.drives_reused,
        "drive_clips_copied": stats.clips_copied,
        "drive_clips_reencoded": stats.clips_reencoded,
        "drive_clips_reused": stats.clips_reused,
        "drive_seconds_cut_per_wall_second": round(stats.seconds_cut / stats.wall_s, 2) if stats.wall_s else 0.0,
    }
