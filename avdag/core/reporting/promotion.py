"""Champion vs challenger: may a newly trained checkpoint replace the one in service?

Both are judged on the same eval clips with the same judge and prompts. Per clip, a side's score
is its strict mean over the questions (a missing answer or failed judgement counts 1, the
rubric's lowest); the decision reads the paired per-clip difference (challenger - champion),
with a bootstrap 95% interval beside it. The rule is data, recorded with every decision, so a
promotion can be audited later.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from avdag.core.reporting.statistics import CLIP_KEY, MIN_CLIPS_FOR_INTERVAL, bootstrap_mean_interval

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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def per_clip_strict_means(scores: pd.DataFrame, missing_as: float = 1.0) -> pd.Series:
    """Each clip's mean over its questions, a missing score counted as `missing_as`."""
    if scores.empty:
        return pd.Series(dtype=float)
    strict = pd.to_numeric(scores["score"]).astype(float).fillna(missing_as)
    return strict.groupby([scores[key] for key in CLIP_KEY]).mean()


def decide_promotion(
    champion_scores: pd.DataFrame,
    challenger_scores: pd.DataFrame,
    rule: PromotionRule = PromotionRule(),
    *,
    n_boot: int = 2000,
    seed: int = 0,
) -> PromotionDecision:
    """Apply `rule` to the paired per-clip difference of two sides' score rows."""
    champion, challenger = per_clip_strict_means(champion_scores), per_clip_strict_means(challenger_scores)
    paired = champion.index.intersection(challenger.index)
    diffs = (challenger.loc[paired] - champion.loc[paired]).to_numpy()
    low, high = bootstrap_mean_interval(diffs, n_boot, np.random.default_rng(seed))
    mean = float(diffs.mean()) if len(diffs) else math.nan
    common = dict(
        rule={**asdict(rule), "description": rule.describe()},
        eval_clips=len(paired),
        champion_mean=float(champion.loc[paired].mean()) if len(paired) else math.nan,
        challenger_mean=float(challenger.loc[paired].mean()) if len(paired) else math.nan,
        mean_difference=mean,
        difference_low=low,
        difference_high=high,
    )
    if len(paired) < max(rule.min_eval_clips, 1):
        return PromotionDecision(
            False, f"only {len(paired)} paired eval clip(s); the rule needs {rule.min_eval_clips}", **common
        )
    if rule.mode == "not_significantly_worse" and len(paired) >= MIN_CLIPS_FOR_INTERVAL:
        tested, name = high, "interval upper end"
    else:
        tested, name = mean, "mean difference"
    promote = tested >= -rule.max_regression
    verdict = "not worse" if promote else "worse"
    return PromotionDecision(
        promote,
        f"challenger {verdict}: {name} {tested:+.3f} vs threshold {-rule.max_regression:+g} over {len(paired)} clips",
        **common,
    )
