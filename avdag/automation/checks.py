"""Asset checks: captions parse with all 15 fields, splits do not leak, quarantine is counted."""

import dagster as dg
import pandas as pd

from avdag.resources.io_managers import concat_partitions


def _captions_parse_check(asset_key: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key,
        name="captions_parse_with_all_fields",
        description="Every caption (all batches) parses as a JSON object whose 15 fields have valid types and values.",
    )
    def _check(captions) -> dg.AssetCheckResult:
        captions = concat_partitions(captions)
        complete = captions["fields_ok"] == 15
        failures = captions.loc[~complete, ["batch", "clip_id", "parse_error", "fields_ok"]]
        return dg.AssetCheckResult(
            passed=bool(complete.all()),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "captions": len(captions),
                "complete": int(complete.sum()),
                "parse_failures": int(captions["parsed_json"].isna().sum()),
                "failures": dg.MetadataValue.md(failures.head(20).to_markdown(index=False) if len(failures) else "none"),
            },
        )

    return _check


baseline_captions_check = _captions_parse_check("baseline_captions")
finetuned_captions_check = _captions_parse_check("finetuned_captions")


@dg.asset_check(
    asset="split_manifest",
    blocking=True,
    description="No clip id or content hash is on both the train and the eval side; training waits for this.",
)
def no_train_eval_leak(split_manifest: pd.DataFrame) -> dg.AssetCheckResult:
    from avdag.core.splits import leaks

    found = leaks(split_manifest)
    return dg.AssetCheckResult(
        passed=not found,
        metadata={"leaks": len(found), "examples": dg.MetadataValue.md("\n".join(f"- {x}" for x in found[:20]) or "none")},
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
