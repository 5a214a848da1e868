"""Ingest checks: the split manifest does not leak (blocking), quarantine is counted per check."""

import dagster as dg
import pandas as pd

from avdag.core.ingest.splits import leaks
from avdag.resources.io_managers import concat_partitions


@dg.asset_check(
    asset="split_manifest",
    blocking=True,
    description="No clip id, content hash or near-duplicate group is on both the train and the eval side; "
    "training waits for this.",
)
def no_train_eval_leak(split_manifest: pd.DataFrame) -> dg.AssetCheckResult:
    found = leaks(split_manifest)
    return dg.AssetCheckResult(
        passed=not found,
        metadata={
            "leaks": len(found),
            "examples": dg.MetadataValue.md("\n".join(f"- {x}" for x in found[:20]) or "none"),
        },
    )


@dg.asset_check(asset="clip_quarantine", description="How many files each ingest check rejected, over all batches.")
def quarantine_counts(clip_quarantine) -> dg.AssetCheckResult:
    clip_quarantine = concat_partitions(clip_quarantine)
    counts = clip_quarantine["check"].value_counts() if len(clip_quarantine) else pd.Series(dtype=int)
    return dg.AssetCheckResult(
        passed=True,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"quarantined": len(clip_quarantine), **{check: int(n) for check, n in counts.items()}},
    )
