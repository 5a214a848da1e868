"""Champion vs challenger: may a newly trained checkpoint replace the one in service?

Both are judged on the same eval clips with the same judge and prompts. The sides are paired item
by item, a (clip, question): a missing answer counts 1, the rubric's lowest (the model's fault); an
item whose judgement failed on either side is left out of both and counted (a judge outage during
one side's run must not make that side look worse). Per clip, a side's score is its mean over the
items kept; the decision reads the paired per-clip difference (challenger - champion), with a 95%
Student-t interval beside it (see `statistics`), and says when the sample is small. The rule is
data, recorded with every decision, so a promotion can be audited later.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import pandas as pd

from avdag.core.reporting.statistics import (
    CLIP_KEY,
    JUDGE_FAILURE,
    MIN_CLIPS_FOR_INTERVAL,
    mean_interval,
    score_outcomes,
    small_sample_warning,
    strict_scores,
)

ITEM_KEY = [*CLIP_KEY, "field"]

PromotionMode = Literal["mean_not_worse", "not_significantly_worse"]


@dataclass(frozen=True)
class PromotionRule:
    """`mean_not_worse`: promote when the mean paired difference >= -max_regression.
    `not_significantly_worse`: promote when the interval's upper end >= -max_regression
    (lenient: with few eval clips almost anything passes). Both refuse an evaluation
    with fewer than `min_eval_clips` paired clips, so nothing is promoted on no evidence."""

    mode: PromotionMode = "mean_not_worse"
    max_regression: float = 0.0
    min_eval_clips: int = 1

    def describe(self) -> str:
        bound = "mean" if self.mode == "mean_not_worse" else "95% interval upper end"
        return (
            f"promote when the paired difference's {bound} >= {-self.max_regression:g} "
            f"on at least {self.min_eval_clips} eval clip(s)"
        )


@dataclass(frozen=True)
class PromotionDecision:
    promote: bool
    reason: str
    rule: dict[str, Any]
    eval_clips: int
    champion_mean: float
    challenger_mean: float
    mean_difference: float
    difference_low: float
    difference_high: float
    judge_failures_excluded: int = 0  # (clip, question) items left out: the judge failed on either side
    small_sample: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_clip_strict_means(scores: pd.DataFrame, missing_as: float = 1.0) -> pd.Series:
    """Each clip's mean over its questions: no answer counted as `missing_as`, a failed judgement left out."""
    if scores.empty:
        return pd.Series(dtype=float)
    strict = strict_scores(scores, missing_as)
    return strict.groupby([scores[key] for key in CLIP_KEY]).mean().dropna()


def paired_items(champion_scores: pd.DataFrame, challenger_scores: pd.DataFrame, missing_as: float = 1.0):
    """(per-item strict scores of both sides, items kept on both; count of items left out for a judge failure)."""
    sides = []
    for name, scores in (("champion", champion_scores), ("challenger", challenger_scores)):
        if scores.empty:
            scores = pd.DataFrame(columns=[*ITEM_KEY, "score", "model_answer", "judge_error"])
        sides.append(
            scores[ITEM_KEY].assign(
                **{name: strict_scores(scores, missing_as).to_numpy(), f"{name}_failed": _failed(scores)}
            )
        )
    both = sides[0].merge(sides[1], on=ITEM_KEY, how="inner", validate="one_to_one")
    failed = both["champion_failed"] | both["challenger_failed"]
    kept = both[both["champion"].notna() & both["challenger"].notna()]
    return kept[[*ITEM_KEY, "champion", "challenger"]], int(failed.sum())


def _failed(scores: pd.DataFrame) -> list[bool]:
    return list(score_outcomes(scores) == JUDGE_FAILURE) if len(scores) else []


def decide_promotion(
    champion_scores: pd.DataFrame, challenger_scores: pd.DataFrame, rule: PromotionRule = PromotionRule()
) -> PromotionDecision:
    """Apply `rule` to the paired per-clip difference of two sides' score rows (paired item by item)."""
    items, excluded = paired_items(champion_scores, challenger_scores)
    per_clip = items.groupby(CLIP_KEY)[["champion", "challenger"]].mean()
    diffs = (per_clip["challenger"] - per_clip["champion"]).to_numpy()
    low, high = mean_interval(diffs)
    mean = float(diffs.mean()) if len(diffs) else math.nan
    n = len(per_clip)
    common = dict(
        rule={**asdict(rule), "description": rule.describe()},
        eval_clips=n,
        champion_mean=float(per_clip["champion"].mean()) if n else math.nan,
        challenger_mean=float(per_clip["challenger"].mean()) if n else math.nan,
        mean_difference=mean,
        difference_low=low,
        difference_high=high,
        judge_failures_excluded=excluded,
        small_sample=small_sample_warning(n) is not None,
    )
    notes = (f"; {excluded} item(s) left out: the judge failed" if excluded else "") + (
        f"; {small_sample_warning(n)}" if n and small_sample_warning(n) else ""
    )
    if n < max(rule.min_eval_clips, 1):
        return PromotionDecision(
            False, f"only {n} paired eval clip(s); the rule needs {rule.min_eval_clips}{notes}", **common
        )
    if rule.mode == "not_significantly_worse" and n >= MIN_CLIPS_FOR_INTERVAL:
        tested, name = high, "interval upper end"
    else:
        tested, name = mean, "mean difference"
    promote = tested >= -rule.max_regression
    verdict = "not worse" if promote else "worse"
    return PromotionDecision(
        promote,
        f"challenger {verdict}: {name} {tested:+.3f} vs threshold {-rule.max_regression:+g} over {n} clips{notes}",
        **common,
    )
