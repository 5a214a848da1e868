"""Judge checks: the judge tells a human answer from another clip's before its scores are used."""

import dagster as dg

from avdag.core.judging.calibration import MIN_GAP, MIN_SELF_MEAN, calibration_items, labels_of, summarize_calibration
from avdag.core.judging.score_captions import judge_items, spend_of
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS, concat_partitions
from avdag.resources.judge import JudgeResource


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
                "by_field": dg.MetadataValue.md(
                    report.by_field.round(2).to_markdown(index=False) if items else "no items"
                ),
                "reason": dg.MetadataValue.text(report.reason),
            },
        )

    return _check


baseline_judge_calibration = _judge_calibration_check("baseline_judge_scores")
finetuned_judge_calibration = _judge_calibration_check("finetuned_judge_scores")
