"""How sure is "fine-tuned beats baseline"? Per-question statistics of the judge scores.

The judge's 1-5 score is a similarity grade, not accuracy (the recipe says so: long answers
rarely match even when right), so a difference of means needs an interval before it means
anything. Each question gets, per source, its clip count, how many answers were scored, why
the others were not, and the mean; then the paired difference (fine-tuned - baseline, clip by
clip) with a bootstrap 95% percentile interval that resamples clips.

How a missing score counts: as `missing_as` (default 1, the rubric's lowest grade), the way
`compare_scores` has always counted it, so a model that answers nothing cannot come out
ahead. `mean_score` is the recipe's mean over scored answers only, reported beside it.

A clip is its (batch, clip_id): the same id landed in two batches is two eval items, each
judged on its own batch's captions. A clip judged for one source but absent from the other
counts in that source's own numbers and is left out of the paired difference; `n_paired`
says how many clips the difference uses.

For the closed-answer fields, `multiple_choice_table` gives exact accuracy next to always
giving the eval set's majority answer: the recipe's baseline "wins" rule_violation by always
answering "False", which this makes visible as what it is.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import pandas as pd

from avdag.core.captioning.model import CaptionSource
from avdag.core.common.labels import MULTIPLE_CHOICE_FIELDS
from avdag.core.judging.offline_judge import canonical_multiple_choice

SOURCES: tuple[CaptionSource, ...] = get_args(CaptionSource)
CLIP_KEY = ["batch", "clip_id"]
INTERVAL_PERCENTILES = (2.5, 97.5)
# One clip resamples to itself: its "interval" would be a point claiming certainty.
MIN_CLIPS_FOR_INTERVAL = 2


def question_stats(
    baseline: pd.DataFrame,
    finetuned: pd.DataFrame,
    *,
    questions: Sequence[str] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    missing_as: float = 1,
) -> pd.DataFrame:
    """One row per question (in `questions` order, default: order of first appearance).

    Columns: field, n (clips judged for either source), n_paired (for both); per source
    `{source}_n`, `_scored_n`, `_no_answer_rate` (the model gave no answer for the field),
    `_judge_failure_rate` (it answered but the judge gave no score: a failed call or a reply
    without one), `_mean_score` (recipe: scored answers only), `_mean_score_strict` (missing
    = `missing_as`) and its bootstrap interval `_strict_low`/`_strict_high`; then `diff`,
    `diff_low`, `diff_high` and `significant` (the interval excludes 0). Intervals are NaN,
    and `significant` False, below MIN_CLIPS_FOR_INTERVAL clips. The same seed gives the
    same numbers; each question draws from its own stream, so adding one changes no other.
    """
    if questions is None:
        questions = list(pd.unique(pd.concat([baseline["field"], finetuned["field"]])))
    rows = [_one_question(field, baseline, finetuned, n_boot, seed, missing_as) for field in questions]
    return pd.DataFrame(rows)


def _one_question(
    field: str, baseline: pd.DataFrame, finetuned: pd.DataFrame, n_boot: int, seed: int, missing_as: float
) -> dict[str, Any]:
    rng = np.random.default_rng([seed, zlib.crc32(field.encode())])
    clips = {source: _clip_scores(rows, field) for source, rows in zip(SOURCES, (baseline, finetuned))}
    paired = clips["baseline"].index.intersection(clips["finetuned"].index)
    row: dict[str, Any] = {
        "field": field,
        "n": len(clips["baseline"].index.union(clips["finetuned"].index)),
        "n_paired": len(paired),
    }
    for source in SOURCES:
        row.update(_source_stats(source, clips[source], missing_as, n_boot, rng))
    strict = {source: clips[source]["score"].fillna(missing_as) for source in SOURCES}
    diffs = (strict["finetuned"].loc[paired] - strict["baseline"].loc[paired]).to_numpy()
    low, high = bootstrap_mean_interval(diffs, n_boot, rng)
    row.update(
        {
            "diff": float(diffs.mean()) if len(diffs) else math.nan,
            "diff_low": low,
            "diff_high": high,
            "significant": bool(low > 0 or high < 0),
        }
    )
    return row


def _clip_scores(rows: pd.DataFrame, field: str) -> pd.DataFrame:
    """`field`'s score (NaN when missing) and whether the model answered, indexed by clip."""
    subset = rows[rows["field"] == field]
    clips = pd.MultiIndex.from_frame(subset[CLIP_KEY])
    if clips.has_duplicates:
        repeated = list(clips[clips.duplicated()][:5])
        raise ValueError(f"{field}: (batch, clip) scored more than once in one source: {repeated}")
    return pd.DataFrame(
        {
            "score": pd.to_numeric(subset["score"]).astype(float).to_numpy(),
            "answered": subset["model_answer"].notna().to_numpy(),
        },
        index=clips,
    )


def _source_stats(
    source: str, clips: pd.DataFrame, missing_as: float, n_boot: int, rng: np.random.Generator
) -> dict[str, Any]:
    n = len(clips)
    scored = clips["score"].notna()
    strict = clips["score"].fillna(missing_as).to_numpy()
    low, high = bootstrap_mean_interval(strict, n_boot, rng)
    return {
        f"{source}_n": n,
        f"{source}_scored_n": int(scored.sum()),
        f"{source}_no_answer_rate": _rate(~clips["answered"], n),
        f"{source}_judge_failure_rate": _rate(clips["answered"] & ~scored, n),
        f"{source}_mean_score": float(clips["score"].mean()) if scored.any() else math.nan,
        f"{source}_mean_score_strict": float(strict.mean()) if n else math.nan,
        f"{source}_strict_low": low,
        f"{source}_strict_high": high,
    }


def _rate(flags: pd.Series, n: int) -> float:
    return float(flags.sum()) / n if n else math.nan


def bootstrap_mean_interval(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> tuple[float, float]:
    """95% percentile interval of the mean, resampling `values` (one per clip) with replacement."""
    if len(values) < MIN_CLIPS_FOR_INTERVAL:
        return math.nan, math.nan
    resamples = rng.integers(0, len(values), size=(n_boot, len(values)))
    low, high = np.percentile(values[resamples].mean(axis=1), INTERVAL_PERCENTILES)
    return float(low), float(high)


def multiple_choice_table(
    baseline: pd.DataFrame, finetuned: pd.DataFrame, fields: Sequence[str] = MULTIPLE_CHOICE_FIELDS
) -> pd.DataFrame:
    """Per closed-answer field: exact accuracy of each source and of always answering the majority.

    Answers and labels are compared in the canonical form the judges use ("false" is "False",
    "3" is 3); an answer with no canonical form is wrong. Clips whose human label has no
    canonical form are left out. `n` counts the labelled clips of either source, the majority
    answer is theirs (ties go to the first in sorted order), and each source's accuracy is
    over its own labelled clips (`{source}_n`).
    """
    return pd.DataFrame([_multiple_choice_row(field, baseline, finetuned) for field in fields])


def _multiple_choice_row(field: str, baseline: pd.DataFrame, finetuned: pd.DataFrame) -> dict[str, Any]:
    graded = {source: _graded_answers(rows, field) for source, rows in zip(SOURCES, (baseline, finetuned))}
    labels = _labels_by_clip(field, list(graded.values()))
    majority, majority_count = _majority(labels)
    row: dict[str, Any] = {
        "field": field,
        "n": len(labels),
        "majority_answer": majority,
        "majority_accuracy": majority_count / len(labels) if len(labels) else math.nan,
    }
    for source in SOURCES:
        correct = graded[source]["correct"]
        row[f"{source}_n"] = len(correct)
        row[f"{source}_accuracy"] = float(correct.mean()) if len(correct) else math.nan
    return row


def _graded_answers(rows: pd.DataFrame, field: str) -> pd.DataFrame:
    """Canonical human label and whether the model's answer equals it, for labelled clips."""
    subset = rows[rows["field"] == field]
    human = [canonical_multiple_choice(field, json.loads(h)) for h in subset["human_answer"]]
    model = [
        canonical_multiple_choice(field, json.loads(m)) if isinstance(m, str) else None for m in subset["model_answer"]
    ]
    graded = pd.DataFrame(
        {
            "batch": subset["batch"].to_numpy(),
            "clip_id": subset["clip_id"].to_numpy(),
            "label": pd.Series(human, dtype=object),
            "correct": [m is not None and m == h for m, h in zip(model, human)],
        }
    )
    return graded[graded["label"].notna()]


def _labels_by_clip(field: str, graded: list[pd.DataFrame]) -> pd.Series:
    """One label per clip across sources; two sources disagreeing on a label is an error."""
    labels = pd.concat([g[[*CLIP_KEY, "label"]] for g in graded]).drop_duplicates()
    conflicting = labels[labels.duplicated(CLIP_KEY)]
    if len(conflicting):
        raise ValueError(f"{field}: sources disagree on the human label of {conflicting['clip_id'].tolist()[:5]}")
    return labels.set_index(CLIP_KEY)["label"]


def _majority(labels: pd.Series) -> tuple[Any, int]:
    if labels.empty:
        return None, 0
    counts = labels.value_counts()
    answer = min(counts.index, key=lambda value: (-counts[value], str(value)))
    return answer, int(counts[answer])
