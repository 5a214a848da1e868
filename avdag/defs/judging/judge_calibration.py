"""judge_calibration: can the judge tell a right answer from a wrong one on every field? If not, nothing compares.

One asset over the human labels of every batch (not a check per score partition): the judge's
verdict on right-vs-wrong answers does not depend on which captions are scored. Its blocking check
`judge_separates_answers` keeps the reporting run from publishing a comparison the judge cannot make.
"""

import math

import dagster as dg

from avdag.core.judging.calibration import (
    MIN_GAP,
    MIN_PARAPHRASE_MEAN,
    calibration_items,
    constant_answers,
    labels_of,
    summarize_calibration,
    table_records,
)
from avdag.core.judging.score_captions import judge_items, spend_of
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS, concat_partitions
from avdag.resources.judge import JudgeResource


def _number(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 3)


@dg.asset(
    ins={"raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS)},
    io_manager_key="json_io",
    group_name="evaluation",
    kinds={"json"},
    description="The judge scores a sample of human answers against a paraphrase of themselves (right), the "
    "field's most common answer and another clip's answer (wrong); per field, right must beat wrong by "
    f"{MIN_GAP} points.",
)
def judge_calibration(
    context: dg.AssetExecutionContext, raw_clips: dict, judge: JudgeResource, captioner: CaptionerResource
) -> dg.Output[dict]:
    prompts = captioner.prompts()
    labels = labels_of(concat_partitions(raw_clips))
    items = calibration_items(labels, prompts.questions)
    shares = {field: constant.share for field, constant in constant_answers(labels, prompts.questions).items()}
    scorer = judge.with_reference_labels(judge.build(prompts), labels.values())
    judged = judge_items(scorer, [c.item for c in items], judge.cache())
    report = summarize_calibration(
        items,
        [j.verdict for j in judged],
        constant_shares=shares,
        min_gap=MIN_GAP,
        min_paraphrase_mean=MIN_PARAPHRASE_MEAN,
    )
    spend = spend_of(judged)
    context.log.info(f"judge {scorer.judge_id}: {'passed' if report.passed else 'FAILED'}: {report.reason}")
    record = {
        "passed": report.passed,
        "reason": report.reason,
        "judge_id": scorer.judge_id,
        "thresholds": {"min_gap": MIN_GAP, "min_paraphrase_mean": MIN_PARAPHRASE_MEAN},
        "means": {
            "paraphrase": _number(report.paraphrase_mean),
            "constant": _number(report.constant_mean),
            "other": _number(report.other_mean),
        },
        "by_field": table_records(report.by_field),
        "missed_fields": list(report.missed_fields),
        "skipped_fields": list(report.skipped_fields),
        "labelled_clips": len(labels),
        "sampled_clips": report.sampled_clips,
        "judged_items": len(items),
        "failed_items": report.failed,
        "judge_calls": spend.calls,
        "judge_cache_hits": spend.cache_hits,
    }
    return dg.Output(
        record,
        metadata={
            "passed": report.passed,
            "judge_id": dg.MetadataValue.text(scorer.judge_id),
            "missed_fields": dg.MetadataValue.text(", ".join(report.missed_fields) or "none"),
            "judged_items": len(items),
            "judge_calls": spend.calls,
            "by_field": dg.MetadataValue.md(report.by_field.round(2).to_markdown(index=False) if items else "no items"),
            "reason": dg.MetadataValue.text(report.reason),
        },
    )


@dg.asset_check(
    asset=judge_calibration,
    name="judge_separates_answers",
    blocking=True,
    description="Fails, and stops what reads judge_calibration in the same run, when the judge does not score "
    f"a right answer {MIN_GAP} points above a wrong one on every field.",
)
def judge_separates_answers(judge_calibration: dict) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=bool(judge_calibration["passed"]),
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "judge_id": dg.MetadataValue.text(judge_calibration["judge_id"]),
            "missed_fields": dg.MetadataValue.text(", ".join(judge_calibration["missed_fields"]) or "none"),
            "min_gap": judge_calibration["thresholds"]["min_gap"],
            "reason": dg.MetadataValue.text(judge_calibration["reason"]),
        },
    )
