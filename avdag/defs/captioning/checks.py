"""Caption checks: every caption parses as the rubric's JSON with all its fields."""

import dagster as dg

from avdag.core.common.labels import FIELD_COUNT
from avdag.resources.io_managers import concat_partitions


def _captions_parse_check(asset_key: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key,
        name="captions_parse_with_all_fields",
        description="Every caption (all batches) parses as a JSON object whose rubric fields all have valid "
        "types and values.",
    )
    def _check(captions) -> dg.AssetCheckResult:
        captions = concat_partitions(captions)
        complete = captions["fields_ok"] == FIELD_COUNT
        failures = captions.loc[~complete, ["batch", "clip_id", "parse_error", "fields_ok"]]
        return dg.AssetCheckResult(
            passed=bool(complete.all()),
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "captions": len(captions),
                "complete": int(complete.sum()),
                "parse_failures": int(captions["parsed_json"].isna().sum()),
                "failures": dg.MetadataValue.md(
                    failures.head(20).to_markdown(index=False) if len(failures) else "none"
                ),
            },
        )

    return _check


baseline_captions_check = _captions_parse_check("baseline_captions")
finetuned_captions_check = _captions_parse_check("finetuned_captions")
