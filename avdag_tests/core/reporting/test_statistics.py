"""Per-question statistics and multiple-choice accuracy on score frames whose truth is known."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from avdag.core.judging.items import NO_HUMAN_ANSWER, NO_MODEL_ANSWER
from avdag.core.judging.score_captions import SCORE_COLUMNS
from avdag.core.reporting.charts import compare_scores, comparison_chart, format_difference, table_as_markdown
from avdag.core.reporting.statistics import (
    MIN_CLIPS_FOR_CONFIDENCE,
    STRICT_MEAN_LABEL,
    mean_interval,
    multiple_choice_table,
    question_stats,
    score_outcomes,
    t_quantile_975,
)


def score_rows(
    scores, field="road_type", *, clip_ids=None, batches=None, judge_errors=None, answered=None, replies=None
):
    """Score rows as score_captions writes them: one per clip, score nullable Int64.

    A row with no model answer gets the skipped-field reply, as `score_captions` gives it.
    """
    n = len(scores)
    clip_ids = clip_ids or [f"clip{i:03d}" for i in range(n)]
    answered = answered or [True] * n
    judge_errors = judge_errors or [None] * n
    frame = pd.DataFrame({column: [None] * n for column in SCORE_COLUMNS})
    frame["clip_id"] = clip_ids
    frame["batch"] = batches or ["batch-1"] * n
    frame["field"] = field
    frame["human_answer"] = json.dumps("a road")
    frame["model_answer"] = [json.dumps("an answer") if a else None for a in answered]
    frame["judge_reply"] = replies or [None if a else NO_MODEL_ANSWER for a in answered]
    frame["judge_error"] = judge_errors
    frame["score"] = pd.array(scores, dtype="Int64")
    return frame


def choice_rows(field, human, model):
    """Rows for a closed-answer field: human labels and model answers as JSON, like judge_batch."""
    frame = score_rows([None] * len(human), field)
    frame["human_answer"] = [json.dumps(h) for h in human]
    frame["model_answer"] = [None if m is None else json.dumps(m) for m in model]
    return frame


def one_row(table):
    assert len(table) == 1
    return table.iloc[0]


def test_clear_improvement_is_significant():
    baseline = score_rows([1, 2, 2, 3, 1, 2, 3, 2] * 5)
    finetuned = score_rows([4, 5, 4, 5, 4, 4, 5, 4] * 5)
    row = one_row(question_stats(baseline, finetuned))
    assert row["diff"] == pytest.approx(4.375 - 2.0)
    assert 0 < row["diff_low"] <= row["diff"] <= row["diff_high"]
    assert row["significant"]
    assert row["baseline_strict_low"] <= row["baseline_mean_score_strict"] <= row["baseline_strict_high"]


def test_identical_sources_have_zero_difference_and_are_not_significant():
    scores = [1, 5, 3, 2, 4, 3, 5, 1] * 4
    row = one_row(question_stats(score_rows(scores), score_rows(scores)))
    assert (row["diff"], row["diff_low"], row["diff_high"]) == (0.0, 0.0, 0.0)
    assert not row["significant"]


def test_pairing_by_clip_finds_a_small_consistent_gain_the_source_means_hide():
    """Clips differ a lot from each other; fine-tuning adds 1 on a quarter of them, nothing elsewhere.

    The per-source intervals overlap widely (unpaired, this would look like noise), but
    the clip-by-clip difference is never negative, so the paired interval excludes 0.
    """
    baseline_scores = [1, 2, 3, 4] * 10
    finetuned_scores = [s + 1 if i % 4 == 0 else s for i, s in enumerate(baseline_scores)]
    row = one_row(question_stats(score_rows(baseline_scores), score_rows(finetuned_scores)))
    assert row["diff"] == pytest.approx(0.25)
    assert row["finetuned_strict_low"] < row["baseline_strict_high"]  # the two error bars overlap
    assert row["diff_high"] - row["diff_low"] < (row["baseline_strict_high"] - row["baseline_strict_low"]) / 2
    assert row["diff_low"] > 0 and row["significant"]


def test_pairing_follows_clip_ids_not_row_order():
    baseline = score_rows([1, 2, 3, 4] * 10)
    finetuned = score_rows([s + 1 if i % 4 == 0 else s for i, s in enumerate([1, 2, 3, 4] * 10)])
    shuffled = finetuned.sample(frac=1, random_state=3).reset_index(drop=True)
    assert question_stats(baseline, shuffled).equals(question_stats(baseline, finetuned))


def test_the_difference_interval_is_students_t_on_the_paired_differences():
    """Differences 0, 1, 1, 2 (mean 1, sd sqrt(2/3)): the interval is 1 -+ t(3) * sd / 2, the same every run."""
    baseline = score_rows([3, 2, 4, 1])
    finetuned = score_rows([3, 3, 5, 3])
    first = question_stats(baseline, finetuned)
    assert first.equals(question_stats(baseline, finetuned))
    row = one_row(first)
    half = 3.1824 * math.sqrt(2 / 3) / 2
    assert (row["diff"], row["diff_low"], row["diff_high"]) == pytest.approx((1, 1 - half, 1 + half))
    assert not row["significant"]  # 1 - 1.30 < 0: four clips do not show it


def test_t_quantiles_match_scipy_at_every_degree_of_freedom():
    stats = pytest.importorskip("scipy.stats")
    for df in [*range(1, 60), 100, 1000]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=1e-4)


def test_percentile_bootstrap_is_too_narrow_at_eight_clips_and_the_reported_interval_is_not():
    """Coverage of the true mean difference over 400 simulated 8-clip evaluations (fixed seed).

    Baseline and fine-tuned scores are drawn from known Likert distributions, so the true
    difference is known. The reported interval covers it about 95% of the time; a 95%
    percentile bootstrap of the same differences (what the report used before) clearly less.
    """
    rng = np.random.default_rng(2024)
    likert = np.arange(1, 6)
    p_baseline, p_finetuned = np.array([0.05, 0.1, 0.6, 0.2, 0.05]), np.array([0.0, 0.05, 0.3, 0.5, 0.15])
    truth = float(likert @ p_finetuned - likert @ p_baseline)
    covered = {"reported": 0, "percentile bootstrap": 0}
    runs = 400
    for _ in range(runs):
        baseline, finetuned = rng.choice(likert, 8, p=p_baseline), rng.choice(likert, 8, p=p_finetuned)
        row = one_row(question_stats(score_rows(list(baseline)), score_rows(list(finetuned))))
        covered["reported"] += row["diff_low"] <= truth <= row["diff_high"]
        diffs = (finetuned - baseline).astype(float)
        means = diffs[rng.integers(0, 8, size=(2000, 8))].mean(axis=1)
        low, high = np.percentile(means, (2.5, 97.5))
        covered["percentile bootstrap"] += low <= truth <= high
    coverage = {name: hits / runs for name, hits in covered.items()}
    assert coverage["reported"] >= 0.92, coverage
    assert coverage["percentile bootstrap"] <= 0.9, coverage
    assert row["small_sample"]  # 8 paired clips are flagged


def test_a_comparison_on_fewer_clips_than_the_confidence_floor_is_flagged_small():
    scores = [1, 2, 3, 4, 5]
    small = one_row(question_stats(score_rows(scores * 2), score_rows(scores[::-1] * 2)))
    enough = one_row(question_stats(score_rows(scores * 4), score_rows(scores[::-1] * 4)))
    assert MIN_CLIPS_FOR_CONFIDENCE == 20
    assert small["small_sample"] and not enough["small_sample"]


def test_mean_interval_needs_two_values_and_stays_in_the_score_range():
    assert all(math.isnan(v) for v in mean_interval(np.array([3.0])))
    assert mean_interval(np.array([2.0, 2.0, 2.0])) == (2.0, 2.0)
    assert mean_interval(np.array([5.0, 5.0, 3.0]), bounds=(1, 5))[1] == 5.0
    row = one_row(question_stats(score_rows([1, 1, 1]), score_rows([5, 5, 3])))
    assert row["finetuned_strict_high"] == 5.0 and row["finetuned_strict_low"] < 4.33


def test_a_questions_numbers_do_not_depend_on_the_other_questions():
    weather = score_rows([1, 3, 5, 2, 4] * 4, "weather")
    weather_finetuned = score_rows([4, 2, 5, 3, 1] * 4, "weather")
    lighting = score_rows([2, 2, 5, 1, 3] * 4, "lighting")
    alone = question_stats(weather, weather_finetuned)
    both = question_stats(pd.concat([lighting, weather]), pd.concat([lighting, weather_finetuned]))
    assert list(both["field"]) == ["lighting", "weather"]
    assert both.iloc[1].equals(one_row(alone).rename(both.index[1]))


def test_a_missing_answer_counts_one_and_a_failed_judgement_is_left_out_and_counted():
    """4 clips: scored 5, judge call failed, judge reply without a score, no model answer."""
    finetuned = score_rows(
        [5, None, None, None],
        judge_errors=[None, "timeout after 3 tries", None, None],
        answered=[True, True, True, False],
    )
    baseline = score_rows([3, 3, 3, 3])
    row = one_row(question_stats(baseline, finetuned))
    assert row["finetuned_n"] == 4 and row["finetuned_scored_n"] == 1
    assert row["finetuned_no_answer_rate"] == 0.25
    assert row["finetuned_judge_failures"] == 2 and row["finetuned_judge_failure_rate"] == 0.5
    assert row["finetuned_mean_score"] == 5.0  # the recipe's mean ignores the three missing scores
    assert row["finetuned_mean_score_strict"] == 3.0  # (5 + 1) / 2: the no-answer clip counts 1, the judge's two not
    assert (row["n_paired"], row["judge_failures_excluded"]) == (2, 2)
    assert row["diff"] == 0.0  # (5 - 3) and (1 - 3)
    assert (row["baseline_no_answer_rate"], row["baseline_judge_failure_rate"]) == (0.0, 0.0)


def test_a_judge_outage_during_one_sides_run_is_not_a_regression():
    """The same answers on both sides; the judge failed on half of the fine-tuned clips."""
    scores = [3, 4, 5, 4] * 6
    outage = ["HTTP 503 after 3 tries" if i % 2 else None for i in range(len(scores))]
    finetuned = score_rows([None if error else s for s, error in zip(scores, outage)], judge_errors=outage)
    row = one_row(compare_scores(score_rows(scores), finetuned, ["road_type"]))
    assert row["diff"] == 0.0 and not row["significant"] and not row["finetuned_worse"]
    assert (row["n"], row["n_paired"], row["judge_failures_excluded"]) == (24, 12, 12)
    assert row["finetuned_mean_score_strict"] == pytest.approx(np.mean(scores[::2]))


def test_a_field_the_human_label_lacks_is_neither_a_failure_nor_a_missing_answer():
    finetuned = score_rows([4, None], replies=[None, NO_HUMAN_ANSWER])
    row = one_row(question_stats(score_rows([4, 4]), finetuned))
    assert (row["finetuned_judge_failures"], row["finetuned_no_answer_rate"], row["n_paired"]) == (0, 0.0, 1)
    assert row["finetuned_mean_score_strict"] == 4.0


def test_score_outcomes_read_the_rows_score_captions_writes():
    rows = score_rows(
        [4, None, None, None, None],
        judge_errors=[None, "timeout", None, None, None],
        answered=[True, True, True, False, True],
        replies=["<answer>4</answer>", None, "<answer>7</answer>", NO_MODEL_ANSWER, NO_HUMAN_ANSWER],
    )
    assert list(score_outcomes(rows)) == ["scored", "judge_failure", "judge_failure", "no_answer", "no_label"]


def test_missing_as_sets_what_a_missing_answer_counts():
    row = one_row(question_stats(score_rows([3, 3]), score_rows([5, None], answered=[True, False]), missing_as=3))
    assert row["finetuned_mean_score_strict"] == 4.0
    assert row["diff"] == 1.0


def test_a_clip_missing_from_one_source_counts_for_that_source_only():
    baseline = score_rows([3, 3, 1], clip_ids=["a", "b", "c"])
    finetuned = score_rows([3, 3], clip_ids=["a", "b"])
    row = one_row(question_stats(baseline, finetuned))
    assert (row["n"], row["n_paired"], row["baseline_n"], row["finetuned_n"]) == (3, 2, 3, 2)
    assert row["baseline_mean_score_strict"] == pytest.approx(7 / 3)
    assert row["diff"] == 0.0  # over a and b only; c's low baseline score is not a gain


def test_the_same_clip_id_in_two_batches_is_two_clips():
    baseline = score_rows([1, 3], clip_ids=["a", "a"], batches=["b1", "b2"])
    finetuned = score_rows([5, 3], clip_ids=["a", "a"], batches=["b1", "b2"])
    row = one_row(question_stats(baseline, finetuned))
    assert (row["n"], row["n_paired"]) == (2, 2)
    assert row["diff"] == 2.0  # b1: 5 - 1, b2: 3 - 3


def test_one_clip_gives_a_difference_but_no_interval_and_no_significance():
    row = one_row(question_stats(score_rows([1]), score_rows([5])))
    assert row["diff"] == 4.0
    assert math.isnan(row["diff_low"]) and math.isnan(row["baseline_strict_low"])
    assert not row["significant"]
    assert format_difference(row.to_dict()) == "+4.00 [n/a] n.s."


def test_a_clip_scored_twice_in_one_source_is_an_error():
    baseline = score_rows([3, 4], clip_ids=["a", "a"])
    with pytest.raises(ValueError, match="more than once"):
        question_stats(baseline, score_rows([3], clip_ids=["a"]))


def test_compare_scores_keeps_question_order_and_calls_only_significant_gaps():
    baseline = pd.concat(
        [
            score_rows([1, 2] * 10, "weather"),
            score_rows([5, 5] * 10, "rule_violation"),
            score_rows([1, 5, 3] * 6, "safety_analysis"),
        ]
    )
    finetuned = pd.concat(
        [
            score_rows([5, 4] * 10, "weather"),
            score_rows([1, 2] * 10, "rule_violation"),
            score_rows([5, 1, 3] * 6, "safety_analysis"),
        ]
    )
    questions = ["safety_analysis", "weather", "rule_violation", "lane_type"]
    table = compare_scores(baseline, finetuned, questions).set_index("field")
    assert list(table.index) == questions
    assert list(table.index[table["finetuned_better"]]) == ["weather"]
    assert list(table.index[table["finetuned_worse"]]) == ["rule_violation"]
    assert table.loc["lane_type", "n"] == 0 and math.isnan(table.loc["lane_type", "diff"])


def test_chart_is_a_png_and_marks_the_questions_that_are_not_significant():
    baseline = pd.concat([score_rows([1, 2] * 10, "weather"), score_rows([1, 5, 3] * 6, "safety_analysis")])
    finetuned = pd.concat([score_rows([5, 4] * 10, "weather"), score_rows([5, 1, 3] * 6, "safety_analysis")])
    table = compare_scores(baseline, finetuned, ["weather", "safety_analysis", "lane_type"])
    chart = comparison_chart(table, "test")
    assert chart.not_significant == ["safety_analysis", "lane_type"]
    image = Image.open(io.BytesIO(chart.png))
    image.verify()
    assert image.format == "PNG"


def test_always_false_on_mostly_false_labels_scores_exactly_the_majority_baseline():
    labels = ["False"] * 9 + ["True"]
    baseline = choice_rows("rule_violation", labels, ["False"] * 10)
    finetuned = choice_rows("rule_violation", labels, labels[:8] + ["True", "False"])
    row = one_row(multiple_choice_table(baseline, finetuned, ["rule_violation"]))
    assert row["majority_answer"] == "False"
    assert row["majority_accuracy"] == 0.9
    assert row["baseline_accuracy"] == row["majority_accuracy"]
    assert row["finetuned_accuracy"] == 0.8
    assert row["n"] == 10


def test_answers_are_compared_in_the_judges_canonical_form():
    truth = choice_rows("rule_violation", ["False", "True", "True"], ["false", True, " TRUE "])
    difficulty = choice_rows("driving_difficulty", [3, 2, 4], ["3", 2.0, "four"])
    weather = choice_rows("weather", ["Light rain", "Overcast"], ["light  rain", None])
    rows = pd.concat([truth, difficulty, weather])
    table = multiple_choice_table(rows, rows, ["rule_violation", "driving_difficulty", "weather"]).set_index("field")
    assert table["baseline_accuracy"].to_dict() == pytest.approx(
        {"rule_violation": 1.0, "driving_difficulty": 2 / 3, "weather": 0.5}
    )
    assert table.loc["driving_difficulty", "majority_answer"] in (2, 3, 4)
    assert table.loc["driving_difficulty", "majority_accuracy"] == pytest.approx(1 / 3)


def test_majority_tie_goes_to_the_first_answer_in_sorted_order_and_unlabelled_clips_are_left_out():
    rows = choice_rows(
        "lighting",
        ["Daytime (direct sunlight)", "Daytime (diffused light)", None],
        ["Daytime (direct sunlight)", "Daytime (direct sunlight)", "Daytime (direct sunlight)"],
    )
    row = one_row(multiple_choice_table(rows, rows, ["lighting"]))
    assert row["n"] == 2
    assert row["majority_answer"] == "Daytime (diffused light)"
    assert row["baseline_accuracy"] == 0.5


def test_sources_disagreeing_on_a_human_label_is_an_error():
    baseline = choice_rows("interesting_scenario", ["True"], ["True"])
    finetuned = choice_rows("interesting_scenario", ["False"], ["True"])
    with pytest.raises(ValueError, match="disagree"):
        multiple_choice_table(baseline, finetuned, ["interesting_scenario"])


def test_every_mean_column_says_how_missing_answers_and_judge_failures_were_counted():
    table = compare_scores(
        score_rows([3, 4, 5]), score_rows([4, 4, None], judge_errors=[None, None, "x"]), ["road_type"]
    )
    header = table_as_markdown(table).splitlines()[0]
    assert f"baseline {STRICT_MEAN_LABEL}" in header and f"finetuned {STRICT_MEAN_LABEL}" in header
    assert "no answer = 1" in STRICT_MEAN_LABEL and "judge failures left out" in STRICT_MEAN_LABEL
    assert "champion scored" in table_as_markdown(table, ("champion", "challenger"))
