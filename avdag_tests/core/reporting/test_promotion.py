"""The promotion rule on paired per-clip scores: what is promoted, what is refused, and why."""

import math

import pandas as pd
import pytest

from avdag.core.reporting.promotion import PromotionRule, decide_promotion, per_clip_strict_means

FIELDS = ["weather", "lighting", "safety_analysis"]


def _scores(per_clip: dict[str, list[float | None]], batch: str = "b1") -> pd.DataFrame:
    rows = [
        {"batch": batch, "clip_id": clip, "field": field, "score": score}
        for clip, scores in per_clip.items()
        for field, score in zip(FIELDS, scores)
    ]
    return pd.DataFrame(rows).astype({"score": "Float64"})


def test_a_missing_score_counts_as_the_lowest_grade():
    means = per_clip_strict_means(_scores({"c1": [5, None, 3]}))
    assert means.loc[("b1", "c1")] == pytest.approx(3.0)


def test_a_better_challenger_is_promoted_and_the_rule_is_recorded():
    champion = _scores({"c1": [2, 2, 2], "c2": [3, 3, 3], "c3": [1, 2, 3]})
    challenger = _scores({"c1": [4, 4, 4], "c2": [3, 4, 3], "c3": [2, 2, 3]})
    decision = decide_promotion(champion, challenger)
    assert decision.promote and decision.eval_clips == 3
    assert decision.mean_difference == pytest.approx((2 + 1 / 3 + 1 / 3) / 3)
    assert decision.difference_low <= decision.mean_difference <= decision.difference_high
    assert decision.rule["mode"] == "mean_not_worse" and "paired difference" in decision.rule["description"]


def test_a_worse_challenger_is_refused_with_the_reason():
    champion = _scores({"c1": [4, 4, 4], "c2": [5, 5, 5]})
    challenger = _scores({"c1": [4, 4, 3], "c2": [5, 4, 5]})
    decision = decide_promotion(champion, challenger)
    assert not decision.promote
    assert "challenger worse" in decision.reason and "-0.333" in decision.reason


def test_a_tolerance_lets_a_slightly_worse_challenger_through():
    champion = _scores({"c1": [4, 4, 4], "c2": [5, 5, 5]})
    challenger = _scores({"c1": [4, 4, 3], "c2": [5, 4, 5]})
    assert decide_promotion(champion, challenger, PromotionRule(max_regression=0.5)).promote


def test_not_significantly_worse_reads_the_interval_not_the_mean():
    champion = _scores({f"c{i}": [4, 4, 4] for i in range(6)})
    challenger = _scores({f"c{i}": [4, 4, 4] if i else [1, 1, 1] for i in range(6)})  # one clip much worse
    strict = decide_promotion(champion, challenger)
    lenient = decide_promotion(champion, challenger, PromotionRule(mode="not_significantly_worse"))
    assert not strict.promote and lenient.promote
    assert lenient.difference_high >= 0 > lenient.mean_difference


def test_no_paired_eval_clips_is_never_a_promotion():
    decision = decide_promotion(_scores({"c1": [5, 5, 5]}), _scores({"c2": [5, 5, 5]}))
    assert not decision.promote and decision.eval_clips == 0 and math.isnan(decision.mean_difference)
    assert "needs 1" in decision.reason


def test_clips_are_paired_by_batch_and_id():
    champion = pd.concat([_scores({"c1": [1, 1, 1]}, "b1"), _scores({"c1": [5, 5, 5]}, "b2")])
    challenger = pd.concat([_scores({"c1": [2, 2, 2]}, "b1"), _scores({"c1": [5, 5, 5]}, "b2")])
    decision = decide_promotion(champion, challenger)
    assert decision.eval_clips == 2 and decision.mean_difference == pytest.approx(0.5)
