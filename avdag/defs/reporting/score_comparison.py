"""score_comparison: baseline vs fine-tuned per question, as a table and a chart."""

import json

import dagster as dg
import pandas as pd

from avdag.core.judging.score_captions import SCORE_COLUMNS
from avdag.core.reporting.charts import (
    compare_scores,
    comparison_chart,
    multiple_choice_markdown,
    png_markdown,
    table_as_markdown,
)
from avdag.core.reporting.published import publish_report
from avdag.core.reporting.statistics import multiple_choice_table
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS, OPTIONAL_INPUT, concat_partitions
from avdag.resources.storage import ArtifactStoreResource


@dg.asset(
    ins={
        "baseline_judge_scores": dg.AssetIn(metadata=ALL_PARTITIONS),
        "finetuned_judge_scores": dg.AssetIn(metadata=ALL_PARTITIONS),
        "checkpoint_in_service": dg.AssetIn(metadata=OPTIONAL_INPUT),
    },
    io_manager_key="json_io",
    group_name="evaluation",
    kinds={"json", "png"},
)
def score_comparison(
    context: dg.AssetExecutionContext,
    baseline_judge_scores: dict,
    finetuned_judge_scores: dict,
    checkpoint_in_service: dict | None,
    captioner: CaptionerResource,
    artifacts: ArtifactStoreResource,
) -> dg.Output[dict]:
    """Per-question judge means, baseline vs fine-tuned, over the eval clips of every batch.

    Each question gets its paired difference with a bootstrap 95% interval; the closed-answer
    fields also get exact accuracy beside always giving the majority answer.
    """
    baseline, finetuned = _scores(baseline_judge_scores), _scores(finetuned_judge_scores)
    # Only scores of the checkpoint in service count: a batch not yet re-captioned since the last
    # promotion is reported as such, never mixed in.
    in_service = (checkpoint_in_service or {}).get("weights_hash")
    stale = finetuned[finetuned["model_hash"] != in_service] if len(finetuned) else finetuned
    finetuned = finetuned[finetuned["model_hash"] == in_service] if len(finetuned) else finetuned
    stale_batches = sorted(set(stale["batch"]))
    if stale_batches:
        context.log.warning(f"left out: fine-tuned scores of batches {stale_batches} predate the checkpoint in service")
    questions = list(captioner.prompts().questions)
    table = compare_scores(baseline, finetuned, questions)
    accuracy = multiple_choice_table(baseline, finetuned)
    eval_clips = len(pd.concat([baseline, finetuned])[["batch", "clip_id"]].drop_duplicates())
    chart = comparison_chart(table, f"avdag: baseline vs fine-tuned judge scores ({eval_clips} eval clips)")
    report = {
        "eval_clips": eval_clips,
        "questions": len(table),
        "questions_finetuned_better": int(table["finetuned_better"].sum()),
        "questions_finetuned_worse": int(table["finetuned_worse"].sum()),
        "questions_not_significant": chart.not_significant,
        "table": json.loads(table.to_json(orient="records")),
        "multiple_choice_accuracy": json.loads(accuracy.to_json(orient="records")),
        "judge_ids": sorted(set(baseline["judge_id"].dropna()) | set(finetuned["judge_id"].dropna())),
        "checkpoint_in_service": (checkpoint_in_service or {}).get("checkpoint_id"),
        "weights_hash": in_service,
        "batches_left_out": stale_batches,
        "made_by_run": context.run.run_id,
    }
    report_files = publish_report(artifacts.path("reports"), report, chart.png)
    return dg.Output(
        report,
        metadata={
            "eval_clips": eval_clips,
            "questions_finetuned_better": report["questions_finetuned_better"],
            "questions_finetuned_worse": report["questions_finetuned_worse"],
            "table": dg.MetadataValue.md(table_as_markdown(table)),
            "multiple_choice_accuracy": dg.MetadataValue.md(multiple_choice_markdown(accuracy)),
            "chart": dg.MetadataValue.md(png_markdown(chart.png, "baseline vs fine-tuned")),
            "checkpoint_in_service": dg.MetadataValue.text(str(report["checkpoint_in_service"])),
            "batches_left_out": dg.MetadataValue.text(", ".join(stale_batches) or "none"),
            "chart_path": dg.MetadataValue.path(report_files.png),
            "report_path": dg.MetadataValue.path(report_files.json),
        },
    )


def _scores(partitions: dict) -> pd.DataFrame:
    """Every partition's score rows; an empty frame still has the score columns."""
    rows = concat_partitions(partitions)
    return rows if len(rows) else pd.DataFrame(columns=list(SCORE_COLUMNS))
