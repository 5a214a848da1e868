"""How sure is "fine-tuned beats baseline"? Per-question statistics of the judge scores.

The judge's 1-5 score is a similarity grade, not accuracy (the recipe says so: long answers
rarely match even when right), so a difference of means needs an interval before it means
anything. Each question gets, per source, its clip count, how many answers were scored, why
the others were not, and the mean; then the paired difference (fine-tuned - baseline, clip by
clip) with its 95% interval.

What a missing score means decides whose fault it is (`score_outcomes`):
- the model gave no answer for the field (unparsable caption, field left out): the model's
  fault, counted as `missing_as` (default 1, the rubric's lowest grade), so a model that answers
  nothing cannot come out ahead;
- the judge failed (its call errored, or its reply held no 1-5 score although the model did
  answer): nobody's verdict on the model, so the clip is left out of that source's mean and of
  the pairing, and counted on its own (`{source}_judge_failures`, `judge_failures_excluded`).
  Counting it as 1 made an outage during one side's run read as a significant regression;
- the human label lacks the field: no ground truth, left out.
`mean_score_strict` is that mean (STRICT_MEAN_LABEL); `mean_score` is the recipe's mean over
scored answers only, reported beside it. Each source's mean is over its own clips; only the
difference is paired, so where the judge failed on one side, read the difference, not the gap
between the two means.

The interval is Student's t on the per-clip values (for the difference: on the paired
differences), not a bootstrap. The eval split is small (the demo's held 8 clips), and a
percentile bootstrap is too narrow there: it uses the plug-in standard deviation (a factor
sqrt((n-1)/n) too small) and normal-like quantiles (1.96 where t with 7 degrees of freedom says
2.36), so at n=8 its "95%" interval is about a fifth too short and covers the true difference
only ~87-90% of the time on Likert-like scores (the coverage test measures it). BCa corrects
bias and skew but not that width. The t interval is exact for normal differences and close
for bounded ones; an interval is still only as good as its clips, so a comparison on fewer than
MIN_CLIPS_FOR_CONFIDENCE paired clips carries `small_sample`. Its one blind spot: when every
paired difference is the same, it has zero width; with few clips that is the small-sample case.

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
from collections.abc import Sequence
from typing import Any, get_args

import numpy as np
import pandas as pd

from avdag.core.captioning.model import CaptionSource
from avdag.core.common.labels import MULTIPLE_CHOICE_FIELDS
from avdag.core.judging.items import MAX_SCORE, MIN_SCORE, NO_HUMAN_ANSWER
from avdag.core.judging.offline_judge import canonical_multiple_choice

SOURCES: tuple[CaptionSource, ...] = get_args(CaptionSource)
CLIP_KEY = ["batch", "clip_id"]
# One clip has no spread: its "interval" would be a point claiming certainty.
MIN_CLIPS_FOR_INTERVAL = 2
# Below this many paired clips a comparison is reported, with a warning that it is a small sample.
MIN_CLIPS_FOR_CONFIDENCE = 20
INTERVAL_NAME = "95% Student-t interval"
STRICT_MEAN_LABEL = "mean (no answer = 1, judge failures left out)"

SCORED, NO_ANSWER, JUDGE_FAILURE, NO_LABEL = "scored", "no_answer", "judge_failure", "no_label"

# Two-sided 95% quantiles of Student's t for 1..30 degrees of freedom; beyond, a Cornish-Fisher expansion.
_T_975 = (
    12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281,
    2.2010, 2.1788, 2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860,
    2.0796, 2.0739, 2.0687, 2.0639, 2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423,
)  # fmt: skip
_Z_975 = 1.959963984540054


def small_sample_warning(n_clips: int) -> str | None:
    """The warning a comparison over `n_clips` paired clips carries, or None when it has enough."""
    if n_clips >= MIN_CLIPS_FOR_CONFIDENCE:
        return None
    return (
        f"small sample: {n_clips} eval clip(s), fewer than {MIN_CLIPS_FOR_CONFIDENCE}; "
        "the intervals are wide and a difference that is not significant says little"
    )


def score_outcomes(rows: pd.DataFrame) -> pd.Series:
    """Per score row: SCORED, NO_ANSWER (the model's fault), JUDGE_FAILURE or NO_LABEL (nobody's verdict).

    As `score_captions` writes rows: a scored row has a score; a failed judge call sets
    `judge_error`; a field the model did not answer has no `model_answer` (and a skipped-field
    reply); a field the human label lacks has the NO_HUMAN_ANSWER reply; a row with a model
    answer, a label and no score is a judge reply without a 1-5 score (a parse failure or an
    out-of-range score).
    """
    scored = pd.to_numeric(rows["score"]).notna().to_numpy()
    judge_error = rows["judge_error"].notna().to_numpy()
    answered = rows["model_answer"].notna().to_numpy()
    replies = rows["judge_reply"] if "judge_reply" in rows else pd.Series(None, index=rows.index, dtype=object)
    unlabelled = (replies == NO_HUMAN_ANSWER).to_numpy()
    outcome = np.select(
        [scored, judge_error, ~answered, unlabelled],
        [SCORED, JUDGE_FAILURE, NO_ANSWER, NO_LABEL],
        default=JUDGE_FAILURE,
    )
    return pd.Series(outcome, index=rows.index, dtype=object)


def strict_scores(rows: pd.DataFrame, missing_as: float = 1) -> pd.Series:
    """Each row's score as the strict mean counts it: no answer = `missing_as`, NaN when left out."""
    outcome = score_outcomes(rows).to_numpy()
    score = pd.to_numeric(rows["score"]).astype(float).to_numpy()
    strict = np.where(outcome == NO_ANSWER, float(missing_as), np.where(outcome == SCORED, score, np.nan))
    return pd.Series(strict, index=rows.index, dtype=float)


def question_stats(
    first: pd.DataFrame,
    second: pd.DataFrame,
    *,
    questions: Sequence[str] | None = None,
    missing_as: float = 1,
    sources: tuple[str, str] = SOURCES,
) -> pd.DataFrame:
    """One row per question (in `questions` order, default: order of first appearance).

    `first` and `second` are two sources' score rows, named by `sources` (default baseline,
    fine-tuned); the difference is second - first. Columns: field, n (clips judged for either
    source), n_paired (clips whose strict score both sources have: the difference's clips),
    judge_failures_excluded (clips of both sources left out of the pairing because the judge
    failed on either side); per source `{source}_n`, `_scored_n`, `_no_answer_rate` (the model
    gave no answer), `_judge_failures` and `_judge_failure_rate` (the judge gave no score: left
    out), `_mean_score` (recipe: scored answers only), `_mean_score_strict` (STRICT_MEAN_LABEL)
    and its interval `_strict_low`/`_strict_high`; then `diff`, `diff_low`, `diff_high`,
    `significant` (the interval excludes 0) and `small_sample` (n_paired below
    MIN_CLIPS_FOR_CONFIDENCE). Intervals are NaN, and `significant` False, below
    MIN_CLIPS_FOR_INTERVAL clips. Deterministic: no resampling.
    """
    if questions is None:
        questions = list(pd.unique(pd.concat([first["field"], second["field"]])))
    return pd.DataFrame([_one_question(field, first, second, missing_as, sources) for field in questions])


def _one_question(
    field: str, first: pd.DataFrame, second: pd.DataFrame, missing_as: float, sources: tuple[str, str]
) -> dict[str, Any]:
    clips = {source: _clip_scores(rows, field, missing_as) for source, rows in zip(sources, (first, second))}
    before, after = (clips[source] for source in sources)
    both = before.index.intersection(after.index)
    strict_before, strict_after = before["strict"].loc[both], after["strict"].loc[both]
    paired = both[strict_before.notna().to_numpy() & strict_after.notna().to_numpy()]
    failed = (before["outcome"].loc[both] == JUDGE_FAILURE) | (after["outcome"].loc[both] == JUDGE_FAILURE)
    row: dict[str, Any] = {
        "field": field,
        "n": len(before.index.union(after.index)),
        "n_paired": len(paired),
        "judge_failures_excluded": int(failed.sum()),
    }
    floor = min(MIN_SCORE, missing_as)
    for source in sources:
        row.update(_source_stats(source, clips[source], (floor, MAX_SCORE)))
    diffs = (after["strict"].loc[paired] - before["strict"].loc[paired]).to_numpy()
    low, high = mean_interval(diffs, bounds=(floor - MAX_SCORE, MAX_SCORE - floor))
    row.update(
        {
            "diff": float(diffs.mean()) if len(diffs) else math.nan,
            "diff_low": low,
            "diff_high": high,
            "significant": bool(low > 0 or high < 0),
            "small_sample": len(paired) < MIN_CLIPS_FOR_CONFIDENCE,
        }
    )
    return row


def _clip_scores(rows: pd.DataFrame, field: str, missing_as: float) -> pd.DataFrame:
    """`field`'s score, outcome and strict score (NaN when left out), indexed by clip."""
    subset = rows[rows["field"] == field]
    clips = pd.MultiIndex.from_frame(subset[CLIP_KEY])
    if clips.has_duplicates:
        repeated = list(clips[clips.duplicated()][:5])
        raise ValueError(f"{field}: (batch, clip) scored more than once in one source: {repeated}")
    return pd.DataFrame(
        {
            "score": pd.to_numeric(subset["score"]).astype(float).to_numpy(),
            "outcome": score_outcomes(subset).to_numpy(),
            "strict": strict_scores(subset, missing_as).to_numpy(),
        },
        index=clips,
    )


def _source_stats(source: str, clips: pd.DataFrame, bounds: tuple[float, float]) -> dict[str, Any]:
    n = len(clips)
    outcome = clips["outcome"]
    strict = clips["strict"].dropna().to_numpy()
    low, high = mean_interval(strict, bounds=bounds)
    return {
        f"{source}_n": n,
        f"{source}_scored_n": int((outcome == SCORED).sum()),
        f"{source}_no_answer_rate": _rate(outcome == NO_ANSWER, n),
        f"{source}_judge_failures": int((outcome == JUDGE_FAILURE).sum()),
        f"{source}_judge_failure_rate": _rate(outcome == JUDGE_FAILURE, n),
        f"{source}_mean_score": float(clips["score"].mean()) if (outcome == SCORED).any() else math.nan,
        f"{source}_mean_score_strict": float(strict.mean()) if len(strict) else math.nan,
        f"{source}_strict_low": low,
        f"{source}_strict_high": high,
    }


def _rate(flags: pd.Series, n: int) -> float:
    return float(flags.sum()) / n if n else math.nan


def t_quantile_975(df: int) -> float:
    """Student's t 97.5% quantile with `df` degrees of freedom (table to 30, then an expansion exact to 1e-7)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(_T_975):
        return _T_975[df - 1]
    z = _Z_975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
        + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4)
    )


def mean_interval(values: np.ndarray, bounds: tuple[float, float] | None = None) -> tuple[float, float]:
    """95% Student-t interval of the mean of `values` (one per clip); NaN below MIN_CLIPS_FOR_INTERVAL.

    `bounds`, the range the mean cannot leave (1-5 for a score), clips the interval: a mean score
    of 5.6 is not a possibility, and cutting it off loses no coverage.
    """
    values = np.asarray(values, dtype=float)
    n = len(values)
    if n < MIN_CLIPS_FOR_INTERVAL:
        return math.nan, math.nan
    mean = float(values.mean())
    half = t_quantile_975(n - 1) * float(values.std(ddof=1)) / math.sqrt(n)
    low, high = mean - half, mean + half
    if bounds is not None:
        low, high = max(low, bounds[0]), min(high, bounds[1])
    return low, high


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
