"""The promotion rule on paired per-clip scores: what is promoted, what is refused, and why."""

import math

import pandas as pd
import pytest

from avdag.core.reporting.promotion import PromotionRule, decide_promotion, per_clip_strict_means

FIELDS = ["weather", "lighting", "safety_analysis"]
FAILED = "judge failed"  # a score of FAILED: the model answered, the judge call errored


def _scores(per_clip: dict[str, list[float | str | None]], batch: str = "b1") -> pd.DataFrame:
    """Score rows; None is a field the model did not answer, FAILED a judge call that failed."""
    rows = [
        {
            "batch": batch,
            "clip_id": clip,
            "field": field,
            "score": None if score in (None, FAILED) else score,
            "model_answer": None if score is None else '"an answer"',
            "judge_error": "HTTP 503 after 3 tries" if score == FAILED else None,
        }
        for clip, scores in per_clip.items()
        for field, score in zip(FIELDS, scores)
    ]
    return pd.DataFrame(rows).astype({"score": "Float64"})


def test_a_missing_answer_counts_as_the_lowest_grade_and_a_failed_judgement_not_at_all():
    means = per_clip_strict_means(_scores({"c1": [5, None, 3], "c2": [5, FAILED, 3]}))
    assert means.loc[("b1", "c1")] == pytest.approx(3.0)
    assert means.loc[("b1", "c2")] == pytest.approx(4.0)


def test_a_judge_outage_during_the_challengers_run_does_not_refuse_it():
    """Same answers; the judge failed on a third of the challenger's items. Counted as 1, that was -1.0 a clip."""
    champion = _scores({f"c{i}": [4, 5, 2] for i in range(6)})
    challenger = _scores({f"c{i}": [4, 5, FAILED] if i % 2 else [FAILED, 5, 2] for i in range(6)})
    decision = decide_promotion(champion, challenger)
    assert decision.promote and decision.mean_difference == 0.0
    assert decision.judge_failures_excluded == 6 and decision.eval_clips == 6
    assert "6 item(s) left out: the judge failed" in decision.reason


def test_an_item_the_judge_failed_on_one_side_is_left_out_of_both():
    champion = _scores({"c1": [5, 1, FAILED], "c2": [3, 3, 3]})
    challenger = _scores({"c1": [5, 1, 1], "c2": [3, 3, 3]})  # the item the champion lost scored 1 here
    decision = decide_promotion(champion, challenger)
    assert decision.mean_difference == 0.0 and decision.judge_failures_excluded == 1
    assert (decision.champion_mean, decision.challenger_mean) == (pytest.approx(3.0), pytest.approx(3.0))


def test_a_decision_on_few_clips_says_the_sample_is_small():
    champion = _scores({"c1": [2, 2, 2], "c2": [3, 3, 3]})
    challenger = _scores({"c1": [3, 3, 3], "c2": [3, 3, 3]})
    decision = decide_promotion(champion, challenger)
    assert decision.small_sample and "small sample: 2 eval clip(s)" in decision.reason
    many = {f"c{i}": [3, 3, 3] for i in range(20)}
    assert not decide_promotion(_scores(many), _scores(many)).small_sample


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
