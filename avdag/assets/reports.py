"""score_comparison: baseline vs fine-tuned per question, as a table and a chart."""

import json

import dagster as dg
import pandas as pd

from avdag.core.atomic import write_bytes_atomic, write_json_atomic
from avdag.core.labels import MULTIPLE_CHOICE_FIELDS
from avdag.core.report import comparison_chart_png, compare_scores, multiple_choice_accuracy, png_markdown, table_as_markdown
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
)
def score_comparison(
    context: dg.AssetExecutionContext,
    baseline_judge_scores: dict,
    finetuned_judge_scores: dict,
    captioner: CaptionerResource,
    artifacts: ArtifactStoreResource,
) -> dg.Output[dict]:
    """Per-question judge means, baseline vs fine-tuned, over the eval clips of every batch."""
    baseline, finetuned = concat_partitions(baseline_judge_scores), concat_partitions(finetuned_judge_scores)
    baseline = baseline if len(baseline) else pd.DataFrame(columns=["field", "score"])
    finetuned = finetuned if len(finetuned) else pd.DataFrame(columns=["field", "score"])
    questions = list(captioner.prompts().questions)
    table = compare_scores(baseline, finetuned, questions)
    accuracy = {
        source: [multiple_choice_accuracy(rows, f) for f in MULTIPLE_CHOICE_FIELDS]
        for source, rows in (("baseline", baseline), ("finetuned", finetuned))
    }
    eval_clips = int(finetuned["clip_id"].nunique()) if len(finetuned) else 0
    png = comparison_chart_png(table, f"avdag: baseline vs fine-tuned judge scores ({eval_clips} eval clips)")
    report = {
        "eval_clips": eval_clips,
        "questions_finetuned_better": int(table["finetuned_better"].sum()),
        "questions": len(table),
        "table": json.loads(table.to_json(orient="records")),
        "multiple_choice_accuracy": accuracy,
        "judge_ids": sorted(set(baseline.get("judge_id", [])) | set(finetuned.get("judge_id", []))),
    }
    write_bytes_atomic(artifacts.path("reports", "comparison.png"), png)
    write_json_atomic(artifacts.path("reports", "comparison.json"), report)
    return dg.Output(report, metadata={
        "eval_clips": eval_clips,
        "questions_finetuned_better": report["questions_finetuned_better"],
        "table": dg.MetadataValue.md(table_as_markdown(table)),
        "chart": dg.MetadataValue.md(png_markdown(png, "baseline vs fine-tuned")),
        "chart_path": dg.MetadataValue.path(str(artifacts.path("reports", "comparison.png"))),
    })
