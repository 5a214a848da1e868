"""raw_clips: register one batch of the landing zone; bad files go to clip_quarantine."""

import dagster as dg
import pandas as pd

from avdag.automation.partitions import clip_batches
from avdag.core.ingest import CLIP_COLUMNS, QuarantineRecord, ingest_batch
from avdag.resources.storage import ArtifactStoreResource, LandingZoneResource

QUARANTINE_COLUMNS = list(QuarantineRecord.__dataclass_fields__)


@dg.multi_asset(
    outs={
        "raw_clips": dg.AssetOut(io_manager_key="parquet_io", description="One row per decodable clip: probe, hash, label."),
        "clip_quarantine": dg.AssetOut(io_manager_key="parquet_io", description="Every rejected file with the check and reason."),
    },
    partitions_def=clip_batches,
    group_name="ingest",
)
def raw_clips(context: dg.AssetExecutionContext, landing_zone: LandingZoneResource, artifacts: ArtifactStoreResource):
    zone = landing_zone.zone()
    listing = zone.list_batch(context.partition_key)
    clips, quarantine = ingest_batch(
        zone, listing, artifacts.path("cache", "landing"),
        progress=lambda i, n, cid: context.log.debug(f"probing {i}/{n} {cid}"),
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
            "preview": dg.MetadataValue.md(quarantine_df.to_markdown(index=False) if len(quarantine_df) else "nothing quarantined"),
        },
    )
