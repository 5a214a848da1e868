"""Asset checks: captions parse with all 15 fields, splits do not leak, quarantine is counted, the judge is calibrated."""

import dagster as dg
import pandas as pd

from avdag.core.judge_batch import judge_items, spend_of
from avdag.core.judge_calibration import MIN_GAP, MIN_SELF_MEAN, calibration_items, labels_of, summarize_calibration
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS, concat_partitions
from avdag.resources.judge import JudgeResource


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


def _judge_calibration_check(asset_key: str) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=asset_key,
        name="judge_calibration",
        additional_ins={"raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS)},
        description="The judge scores human answers against themselves (~5) and against another clip's (low); "
        "a judge whose gap is too small cannot be trusted with these scores.",
    )
    def _check(raw_clips, judge: JudgeResource, captioner: CaptionerResource) -> dg.AssetCheckResult:
        prompts = captioner.prompts()
        items = calibration_items(labels_of(concat_partitions(raw_clips)), prompts.questions)
        scorer = judge.build(prompts)
        judged = judge_items(scorer, [c.item for c in items], judge.cache())
        report = summarize_calibration(items, [j.verdict for j in judged], min_gap=MIN_GAP, min_self_mean=MIN_SELF_MEAN)
        spend = spend_of(judged)
        return dg.AssetCheckResult(
            passed=report.passed,
            severity=dg.AssetCheckSeverity.ERROR,
            metadata={
                "self_mean": report.self_mean,
                "other_mean": report.other_mean,
                "gap": report.gap,
                "min_gap": MIN_GAP,
                "min_self_mean": MIN_SELF_MEAN,
                "sampled_clips": report.sampled_clips,
                "judged_items": len(items),
                "failed_items": report.failed,
                "judge_id": dg.MetadataValue.text(scorer.judge_id),
                "judge_calls": spend.calls,
                "judge_cache_hits": spend.cache_hits,
                "skipped_fields": dg.MetadataValue.text(", ".join(report.skipped_fields) or "none"),
                "weak_fields": dg.MetadataValue.text(", ".join(report.weak_fields) or "none"),
                "by_field": dg.MetadataValue.md(report.by_field.round(2).to_markdown(index=False) if items else "no items"),
                "reason": dg.MetadataValue.text(report.reason),
            },
        )

    return _check


baseline_judge_calibration = _judge_calibration_check("baseline_judge_scores")
finetuned_judge_calibration = _judge_calibration_check("finetuned_judge_scores")
