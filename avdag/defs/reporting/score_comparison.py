"""score_comparison: baseline vs fine-tuned per question, as a table and a chart, beside the constant answer."""

import json

import dagster as dg
import pandas as pd

from avdag.core.captioning.caption_quality import caption_quality, caption_quality_markdown
from avdag.core.judging.calibration import labels_of
from avdag.core.judging.score_captions import SCORE_COLUMNS
from avdag.core.reporting.charts import (
    compare_scores,
    comparison_chart,
    constant_markdown,
    multiple_choice_markdown,
    png_markdown,
    table_as_markdown,
)
from avdag.core.reporting.constant_answer import (
    clips_of_split,
    constant_answers,
    constant_comparison,
    score_constant_answer,
)
from avdag.core.reporting.published import publish_report
from avdag.core.reporting.statistics import (
    CLIP_KEY,
    INTERVAL_NAME,
    MIN_CLIPS_FOR_CONFIDENCE,
    SOURCES,
    STRICT_MEAN_LABEL,
    multiple_choice_table,
    small_sample_warning,
)
from avdag.resources.captioner import CaptionerResource
from avdag.resources.io_managers import ALL_PARTITIONS, OPTIONAL_INPUT, concat_partitions
from avdag.resources.judge import JudgeResource
from avdag.resources.storage import StateStoreResource


@dg.asset(
    ins={
        "baseline_judge_scores": dg.AssetIn(metadata=ALL_PARTITIONS),
        "finetuned_judge_scores": dg.AssetIn(metadata=ALL_PARTITIONS),
        "baseline_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
        "finetuned_captions": dg.AssetIn(metadata=ALL_PARTITIONS),
        "raw_clips": dg.AssetIn(metadata=ALL_PARTITIONS),
        "clip_splits": dg.AssetIn(metadata=ALL_PARTITIONS),
        "checkpoint_in_service": dg.AssetIn(metadata=OPTIONAL_INPUT),
        "judge_calibration": dg.AssetIn(),
    },
    io_manager_key="json_io",
    group_name="evaluation",
    kinds={"json", "png"},
)
def score_comparison(
    context: dg.AssetExecutionContext,
    baseline_judge_scores: dict,
    finetuned_judge_scores: dict,
    baseline_captions: dict,
    finetuned_captions: dict,
    raw_clips: dict,
    clip_splits: dict,
    checkpoint_in_service: dict | None,
    judge_calibration: dict,
    captioner: CaptionerResource,
    judge: JudgeResource,
    state: StateStoreResource,
) -> dg.Output[dict]:
    """Per-question judge means, baseline vs fine-tuned, over the eval clips of every batch.

    Each question gets its paired difference with a 95% Student-t interval, and the same against
    the constant answer (the commonest train-split label, scored by the same judge); the
    closed-answer fields also get exact accuracy beside always giving the majority answer, and
    each source's captions their quality (token cap, empty, looping, rambling). Fewer than
    MIN_CLIPS_FOR_CONFIDENCE paired clips is reported as a small sample.
    """
    # The blocking check stops this in the reporting run; a run that selected only this asset (the
    # Batch API sensor's) reads the stored calibration and must not publish scores it failed.
    if not judge_calibration["passed"]:
        raise ValueError(
            f"judge {judge_calibration['judge_id']} failed calibration ({judge_calibration['reason']}): "
            "its scores cannot tell a right answer from a wrong one; no comparison is published"
        )
    baseline, finetuned = _scores(baseline_judge_scores), _scores(finetuned_judge_scores)
    # Only scores of the checkpoint in service count: a batch not yet re-captioned since the last
    # promotion is reported as such, never mixed in.
    in_service = (checkpoint_in_service or {}).get("weights_hash")
    stale = finetuned[finetuned["model_hash"] != in_service] if len(finetuned) else finetuned
    finetuned = finetuned[finetuned["model_hash"] == in_service] if len(finetuned) else finetuned
    stale_batches = sorted(set(stale["batch"]))
    if stale_batches:
        context.log.warning(f"left out: fine-tuned scores of batches {stale_batches} predate the checkpoint in service")
    prompts = captioner.prompts()
    questions = list(prompts.questions)
    table = compare_scores(baseline, finetuned, questions)
    accuracy = multiple_choice_table(baseline, finetuned)
    eval_clips = len(pd.concat([baseline, finetuned])[CLIP_KEY].drop_duplicates())
    paired_clips = len(baseline[CLIP_KEY].drop_duplicates().merge(finetuned[CLIP_KEY].drop_duplicates()))
    warning = small_sample_warning(paired_clips)
    if warning:
        context.log.warning(warning)

    clips, splits = concat_partitions(raw_clips), _splits(clip_splits)
    answers = constant_answers(labels_of(clips_of_split(clips, splits, "train")).values())
    constant = None
    if answers:
        scorer, eval_split = judge.build(prompts), clips_of_split(clips, splits, "eval")

        def judge_for_batch(batch: str):
            """As the batch's model answers were judged (judge_scores): its labels are the reference pool."""
            return judge.with_reference_labels(scorer, labels_of(clips[clips["batch"] == batch]).values())

        constant_rows = score_constant_answer(
            scorer,
            prompts,
            eval_split,
            answers,
            cache=judge.cache(),
            log=context.log.info,
            judge_for_batch=judge_for_batch,
        )
        constant = constant_comparison(baseline, finetuned, constant_rows, questions, answers)
    else:
        context.log.warning("no labelled train clips: no constant answer to compare with")

    captions = pd.concat([concat_partitions(baseline_captions), _in_service(finetuned_captions, in_service)])
    quality = caption_quality(captions, clips, sources=SOURCES)

    title = f"avdag: baseline vs fine-tuned judge scores ({eval_clips} eval clips)"
    constant_means = constant.set_index("field")["constant_mean_score_strict"] if constant is not None else None
    chart = comparison_chart(table, title, constant_means=constant_means, warning=warning)
    report = {
        "eval_clips": eval_clips,
        "paired_clips": paired_clips,
        "small_sample": warning is not None,
        "small_sample_warning": warning,
        "min_clips_for_confidence": MIN_CLIPS_FOR_CONFIDENCE,
        "means": STRICT_MEAN_LABEL,
        "interval": f"{INTERVAL_NAME} of the paired per-clip difference",
        "questions": len(table),
        "questions_finetuned_better": int(table["finetuned_better"].sum()),
        "questions_finetuned_worse": int(table["finetuned_worse"].sum()),
        "questions_not_significant": chart.not_significant,
        "judge_failures_excluded": int(table["judge_failures_excluded"].sum()),
        "table": json.loads(table.to_json(orient="records")),
        "multiple_choice_accuracy": json.loads(accuracy.to_json(orient="records")),
        "constant_answer": _constant_report(constant, answers, clips, splits),
        "caption_quality": json.loads(quality.to_json(orient="records")),
        "judge_calibration": {
            k: judge_calibration[k] for k in ("passed", "reason", "judge_id", "thresholds", "means", "by_field")
        },
        "judge_ids": sorted(set(baseline["judge_id"].dropna()) | set(finetuned["judge_id"].dropna())),
        "checkpoint_in_service": (checkpoint_in_service or {}).get("checkpoint_id"),
        "weights_hash": in_service,
        "batches_left_out": stale_batches,
        "made_by_run": context.run.run_id,
    }
    store = state.store()
    report_files = publish_report(store, report, chart.png)
    return dg.Output(
        report,
        metadata={
            "eval_clips": eval_clips,
            "small_sample": dg.MetadataValue.text(warning or f"no: {paired_clips} paired clips"),
            "questions_finetuned_better": report["questions_finetuned_better"],
            "questions_finetuned_worse": report["questions_finetuned_worse"],
            "questions_finetuned_better_than_constant": (report["constant_answer"] or {}).get(
                "questions_finetuned_better", 0
            ),
            "judge_failures_excluded": report["judge_failures_excluded"],
            "judge_calibration": dg.MetadataValue.text(judge_calibration["reason"]),
            "table": dg.MetadataValue.md(table_as_markdown(table)),
            "constant_answer": dg.MetadataValue.md(
                constant_markdown(constant) if constant is not None else "no labelled train clips"
            ),
            "multiple_choice_accuracy": dg.MetadataValue.md(multiple_choice_markdown(accuracy)),
            "caption_quality": dg.MetadataValue.md(caption_quality_markdown(quality)),
            "chart": dg.MetadataValue.md(png_markdown(chart.png, "baseline vs fine-tuned")),
            "checkpoint_in_service": dg.MetadataValue.text(str(report["checkpoint_in_service"])),
            "batches_left_out": dg.MetadataValue.text(", ".join(stale_batches) or "none"),
            "chart_path": dg.MetadataValue.path(store.uri(report_files.png)),
            "report_path": dg.MetadataValue.path(store.uri(report_files.json)),
        },
    )


def _scores(partitions: dict) -> pd.DataFrame:
    """Every partition's score rows; an empty frame still has the score columns."""
    rows = concat_partitions(partitions)
    return rows if len(rows) else pd.DataFrame(columns=list(SCORE_COLUMNS))


def _splits(partitions: dict) -> pd.DataFrame:
    """Every batch's clip sides, with the batch (a clip_splits partition does not name its own)."""
    frames = [frame.assign(batch=batch) for batch, frame in sorted(partitions.items()) if frame is not None]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=[*CLIP_KEY, "split"])


def _in_service(partitions: dict, weights_hash: str | None) -> pd.DataFrame:
    """Fine-tuned captions of the checkpoint in service only, as for the scores."""
    captions = concat_partitions(partitions)
    return captions[captions["model_hash"] == weights_hash] if len(captions) else captions


def _constant_report(constant: pd.DataFrame | None, answers: dict, clips: pd.DataFrame, splits: pd.DataFrame):
    if constant is None:
        return None
    return {
        "answers": answers,
        "train_clips": len(clips_of_split(clips, splits, "train")),
        "questions_finetuned_better": int(constant["finetuned_better"].sum()),
        "questions_finetuned_worse": int(constant["finetuned_worse"].sum()),
        "questions_baseline_worse": int(constant["baseline_worse"].sum()),
        "table": json.loads(constant.to_json(orient="records")),
    }
