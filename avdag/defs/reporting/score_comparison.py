"""score_comparison: baseline vs fine-tuned per question, as a table and a chart."""

import json

import dagster as dg
import pandas as pd

from avdag.core.common.atomic import write_bytes_atomic, write_json_atomic
from avdag.core.judging.score_captions import SCORE_COLUMNS
from avdag.core.reporting.charts import (
    compare_scores,
    comparison_chart,
    multiple_choice_markdown,
    png_markdown,
    table_as_markdown,
)
from avdag.core.reporting.statistics import multiple_choice_table
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS, concat_partitions
from avdag.resources.storage import ArtifactStoreResource


@dg.asset(
    ins={
        "baseline_judge_scores": dg.AssetIn(metadata=ALL_PARTITIONS),
        "finetuned_judge_scores": dg.AssetIn(metadata=ALL_PARTITIONS),
    },
    io_manager_key="json_io",
    group_name="evaluation",
    kinds={"json", "png"},
)
def score_comparison(
    context: dg.AssetExecutionContext,
    baseline_judge_scores: dict,
    finetuned_judge_scores: dict,
    captioner: CaptionerResource,
    artifacts: ArtifactStoreResource,
) -> dg.Output[dict]:
    """Per-question judge means, baseline vs fine-tuned, over the eval clips of every batch.

    Each question gets its paired difference with a bootstrap 95% interval; the closed-answer
    fields also get exact accuracy beside always giving the majority answer.
    """
    baseline, finetuned = _scores(baseline_judge_scores), _scores(finetuned_judge_scores)
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
    }
    write_bytes_atomic(artifacts.path("reports", "comparison.png"), chart.png)
    write_json_atomic(artifacts.path("reports", "comparison.json"), report)
    return dg.Output(
        report,
        metadata={
            "eval_clips": eval_clips,
            "questions_finetuned_better": report["questions_finetuned_better"],
            "questions_finetuned_worse": report["questions_finetuned_worse"],
            "table": dg.MetadataValue.md(table_as_markdown(table)),
            "multiple_choice_accuracy": dg.MetadataValue.md(multiple_choice_markdown(accuracy)),
            "chart": dg.MetadataValue.md(png_markdown(chart.png, "baseline vs fine-tuned")),
            "chart_path": dg.MetadataValue.path(str(artifacts.path("reports", "comparison.png"))),
        },
    )


def _scores(partitions: dict) -> pd.DataFrame:
    """Every partition's score rows; an empty frame still has the score columns."""
    rows = concat_partitions(partitions)
    return rows if len(rows) else pd.DataFrame(columns=list(SCORE_COLUMNS))
