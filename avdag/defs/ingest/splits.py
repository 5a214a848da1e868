"""clip_splits: the stable train/eval/unlabelled side of every clip of a batch."""

import dagster as dg
import pandas as pd
from pydantic import Field

from avdag.core.ingest.splits import EVAL_FRACTION, GROUP_COLUMN, assign_splits
from avdag.defs.pipeline.instance_reads import latest_of_partition
from avdag.defs.pipeline.partitions import FOLLOW_NEW_CLIPS, clip_batches
from avdag.resources.io_managers import ALL_PARTITIONS


class SplitConfig(dg.Config):
    eval_fraction: float | None = Field(
        default=None,
        description="Share of labelled clips held out for evaluation. Default: the fraction this batch was split "
        f"at before (so a re-run never moves a clip between sides), else {EVAL_FRACTION}. Raising it only moves "
        "clips train->eval.",
    )


@dg.asset(
    partitions_def=clip_batches,
    io_manager_key="parquet_io",
    automation_condition=FOLLOW_NEW_CLIPS,
    group_name="ingest",
    kinds={"parquet"},
)
def clip_splits(
    context: dg.AssetExecutionContext, config: SplitConfig, raw_clips: pd.DataFrame
) -> dg.Output[pd.DataFrame]:
    """Train/eval by a hash of the clip id, or of its near-duplicate group's first clip (10% eval by default);
    clips without a valid label are 'unlabelled'."""
    fraction = config.eval_fraction
    if fraction is None:
        before = latest_of_partition(context.instance, "clip_splits", context.partition_key)
        fraction = float((before.metadata if before else {}).get("eval_fraction", EVAL_FRACTION))
    # Near-duplicates take their group's side (a batch ingested before groups existed: each clip its own).
    groups = raw_clips[GROUP_COLUMN] if GROUP_COLUMN in raw_clips else raw_clips["clip_id"]
    groups = groups.fillna(raw_clips["clip_id"])
    sides = assign_splits(
        list(zip(raw_clips["clip_id"], raw_clips["label_json"].notna())),
        fraction,
        groups=dict(zip(raw_clips["clip_id"], groups)),
    )
    frame = pd.DataFrame(
        {
            "clip_id": raw_clips["clip_id"],
            "sha256": raw_clips["sha256"],
            "split": raw_clips["clip_id"].map(sides),
            GROUP_COLUMN: groups,
        }
    )
    counts = frame["split"].value_counts()
    return dg.Output(
        frame,
        metadata={
            "eval_fraction": fraction,
            **{side: int(counts.get(side, 0)) for side in ("train", "eval", "unlabelled")},
        },
    )


@dg.asset(
    ins={"clip_splits": dg.AssetIn(metadata=ALL_PARTITIONS)},
    io_manager_key="parquet_io",
    group_name="ingest",
    kinds={"parquet"},
)
def split_manifest(clip_splits: dict) -> dg.Output[pd.DataFrame]:
    """Every batch's splits in one table: what training and evaluation read, checked for leaks."""
    frames = [frame.assign(batch=batch) for batch, frame in sorted(clip_splits.items())]
    manifest = (
        pd.concat(frames, ignore_index=True)
        if frames
        else pd.DataFrame(columns=["clip_id", "sha256", "split", GROUP_COLUMN, "batch"])
    )
    counts = manifest["split"].value_counts()
    return dg.Output(
        manifest,
        metadata={"batches": len(frames), **{s: int(counts.get(s, 0)) for s in ("train", "eval", "unlabelled")}},
    )
