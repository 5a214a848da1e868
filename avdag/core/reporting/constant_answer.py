"""The constant answer: what a model that memorised one template would score.

For each field, the commonest human answer of the train split (every batch) is given for every
eval clip and scored by the same judge, against each clip's human answer, as the models are.
Beating the baseline is not enough when the baseline is worse than always answering the same
thing: fine-tuning on a rubric with dominant answers can learn the template and nothing of the
video. So every field reports fine-tuned - constant beside fine-tuned - baseline, paired by clip
with the same interval (`statistics.question_stats`).

Answers are counted in the form the judges compare them: a closed-answer field by its canonical
value ("false" is "False"), text with case and spacing folded; the answer given is its commonest
spelling. Ties go to the first form in sorted order, so the constant is the
same on every run.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd

from avdag.core.common.labels import FIELDS
from avdag.core.judging.calibration import constant_answers as calibration_constants
from avdag.core.judging.score_captions import SCORE_COLUMNS, score_captions
from avdag.core.judging.verdict_cache import JudgeCache
from avdag.core.reporting.statistics import CLIP_KEY, question_stats

CONSTANT_SOURCE = "constant"
CONSTANT_MODEL = "constant:commonest-train-answer"


def clips_of_split(raw_clips: pd.DataFrame, splits: pd.DataFrame, split: str) -> pd.DataFrame:
    """The raw_clips rows (every batch) whose side in `splits` (batch, clip_id, split) is `split`."""
    if raw_clips.empty or splits.empty:
        return pd.DataFrame(columns=[*CLIP_KEY, "label_json"])
    sides = splits[[*CLIP_KEY, "split"]]
    clips = raw_clips.merge(sides, on=CLIP_KEY)
    return clips[clips["split"] == split].drop(columns="split").sort_values(CLIP_KEY).reset_index(drop=True)


def constant_answers(labels: Iterable[dict[str, Any]], fields: Sequence[str] = FIELDS) -> dict[str, Any]:
    """Per field, the commonest answer among `labels` (a field no label has is left out), counted as the
    judge calibration counts it (`calibration.constant_answers`), so both name the same constant."""
    by_position = dict(enumerate(labels))
    return {field: constant.value for field, constant in calibration_constants(by_position, fields).items()}


def constant_captions(eval_clips: pd.DataFrame, answers: dict[str, Any]) -> pd.DataFrame:
    """Caption rows, as `score_captions` reads them, that give `answers` for every clip of `eval_clips`."""
    answer_json = json.dumps(answers, ensure_ascii=False, sort_keys=True)
    model_hash = hashlib.sha256(answer_json.encode("utf-8")).hexdigest()[:16]
    return pd.DataFrame(
        {
            "clip_id": eval_clips["clip_id"].to_numpy(),
            "batch": eval_clips["batch"].to_numpy(),
            "caption_source": CONSTANT_SOURCE,
            "model_path": CONSTANT_MODEL,
            "model_hash": model_hash,
            "prompt_hash": None,
            "generation": None,
            "caption_key": None,
            "parsed_json": answer_json,
        }
    )


def score_constant_answer(
    judge,
    prompts,
    eval_clips: pd.DataFrame,
    answers: dict[str, Any],
    *,
    cache: JudgeCache | None = None,
    log: Callable[[str], None] = print,
    judge_for_batch: Callable[[str], Any] | None = None,
) -> pd.DataFrame:
    """Score rows of the constant answer on `eval_clips`, batch by batch (a clip id is unique within one).

    `judge_for_batch(batch)`, when given, is the judge for that batch's clips: the one its models'
    answers were scored with (the offline judge's reference pool is the batch's labels)."""
    captions = constant_captions(eval_clips, answers)
    frames = [
        score_captions(
            judge_for_batch(batch) if judge_for_batch else judge,
            prompts,
            group,
            captions[captions["batch"] == batch],
            cache=cache,
            log=log,
        )[0]
        for batch, group in eval_clips.groupby("batch")
    ]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(SCORE_COLUMNS))


def constant_comparison(
    baseline: pd.DataFrame,
    finetuned: pd.DataFrame,
    constant: pd.DataFrame,
    questions: Sequence[str],
    answers: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Per question: the constant answer, its strict mean, and each model's paired difference from it.

    Columns: field, constant_answer (JSON, when `answers` is given), constant_mean_score_strict,
    then for baseline and fine-tuned: `{source}_mean_score_strict`, `{source}_n_paired`,
    `{source}_diff` ({source} - constant), `_diff_low`, `_diff_high`, `_better` and `_worse`
    (the interval excludes 0 on that side); and `small_sample`, `judge_failures_excluded`
    (either model's pairing).
    """
    rows = []
    sides = {
        source: question_stats(constant, rows_, questions=questions, sources=(CONSTANT_SOURCE, source)).set_index(
            "field"
        )
        for source, rows_ in (("baseline", baseline), ("finetuned", finetuned))
    }
    for field in questions:
        row: dict[str, Any] = {"field": field}
        if answers is not None:
            row["constant_answer"] = json.dumps(answers[field], ensure_ascii=False) if field in answers else None
        row["constant_mean_score_strict"] = sides["finetuned"].loc[field, f"{CONSTANT_SOURCE}_mean_score_strict"]
        for source, stats in sides.items():
            one = stats.loc[field]
            row[f"{source}_mean_score_strict"] = one[f"{source}_mean_score_strict"]
            row[f"{source}_n_paired"] = int(one["n_paired"])
            row[f"{source}_diff"] = one["diff"]
            row[f"{source}_diff_low"] = one["diff_low"]
            row[f"{source}_diff_high"] = one["diff_high"]
            row[f"{source}_better"] = bool(one["significant"] and one["diff"] > 0)
            row[f"{source}_worse"] = bool(one["significant"] and one["diff"] < 0)
        row["small_sample"] = bool(sides["finetuned"].loc[field, "small_sample"])
        row["judge_failures_excluded"] = int(
            sum(stats.loc[field, "judge_failures_excluded"] for stats in sides.values())
        )
        rows.append(row)
    return pd.DataFrame(rows)
