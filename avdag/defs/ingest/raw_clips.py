"""raw_clips: register one batch of the landing zone; bad files go to clip_quarantine."""

import dagster as dg
import pandas as pd
from pydantic import Field

from avdag.core.ingest.upload_batch import CLIP_COLUMNS, IngestLimits, QuarantineRecord, ingest_batch
from avdag.defs.pipeline.partitions import clip_batches
from avdag.resources.registry import ClipRegistryResource
from avdag.resources.storage import LandingZoneResource, StateStoreResource

_DEFAULT_LIMITS = IngestLimits()


class IngestConfig(dg.Config):
    """Bounds a clip must meet; anything outside goes to quarantine with the reason."""

    min_duration_s: float = Field(default=_DEFAULT_LIMITS.min_duration_s)
    max_duration_s: float = Field(default=_DEFAULT_LIMITS.max_duration_s)
    min_width: int = _DEFAULT_LIMITS.min_width
    min_height: int = _DEFAULT_LIMITS.min_height
    max_width: int = _DEFAULT_LIMITS.max_width
    max_height: int = _DEFAULT_LIMITS.max_height
    max_size_bytes: int = _DEFAULT_LIMITS.max_size_bytes

    def limits(self) -> IngestLimits:
        return IngestLimits(**self.model_dump())


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
    """Probe and validate one batch; deduplicate by content across all batches."""
    zone = landing_zone.zone()
    batch = context.partition_key
    if zone.marker_signature(batch) is None:
        raise dg.Failure(f"batch {batch} in {zone.url} is not ready: it has no _READY or _MANIFEST.json marker yet")
    listing = zone.list_batch(batch)
    clips, quarantine = ingest_batch(
        zone,
        listing,
        state.scratch() / "landing",
        progress=lambda i, n, cid: context.log.debug(f"probing {i}/{n} {cid}"),
        limits=config.limits(),
        registry=clip_registry.registry(),
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
            "total_duration_s": float(clips_df["duration_s"].sum()),
            "source": dg.MetadataValue.text(zone.url),
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
