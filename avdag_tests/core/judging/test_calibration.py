"""Judge calibration: which paraphrase/constant/other items are asked, and how the verdicts decide pass or fail."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from avdag.core.captioning.prompts import load_prompt_set
from avdag.core.judging.calibration import (
    TABLE_COLUMNS,
    answer_key,
    calibration_items,
    calibration_table,
    constant_answers,
    labels_of,
    summarize_calibration,
)
from avdag.core.judging.judges import JudgeVerdict
from avdag.core.judging.offline_judge import OfflineEmbeddingJudge
from avdag.demo.sample_batch import REAL_CLIP_DIR, REAL_CLIP_ID
from avdag.demo.synthetic_clips import plan_clip

QUESTIONS = {"weather": "What is the weather?", "road_type": "What kind of road?", "rule_violation": "Any law broken?"}


def _labels(n: int) -> dict[str, dict]:
    """weather: 2 of 3 clips "Clear skies"; road_type: unique; rule_violation: always "False"."""
    return {
        f"clip{i:02d}": {
            "weather": ["Clear skies", "Clear skies", "Light rain"][i % 3],
            "road_type": f"road number {i}",
            "rule_violation": "False",
        }
        for i in range(n)
    }


def _verdicts(items, score_of) -> list[JudgeVerdict]:
    return [JudgeVerdict(score=score_of(c), reply=f"<answer>{score_of(c)}</answer>") for c in items]


def _perfect(c) -> int:
    return 5 if c.kind == "paraphrase" else 1


def test_sampling_is_deterministic_and_bounded():
    labels = _labels(20)
    items = calibration_items(labels, QUESTIONS, sample=5, seed=3)
    assert items == calibration_items(dict(reversed(labels.items())), QUESTIONS, sample=5, seed=3)
    assert len({c.clip_id for c in items}) == 5
    assert {c.clip_id for c in items} != {c.clip_id for c in calibration_items(labels, QUESTIONS, sample=5, seed=4)}
    assert len({c.clip_id for c in calibration_items(_labels(3), QUESTIONS, sample=5)}) == 3
    assert calibration_items({}, QUESTIONS) == []


def test_paraphrases_differ_from_the_human_answer_but_mean_the_same():
    """v1 asked the human answer against itself: every judge short-circuits identical strings to 5."""
    labels = _labels(6)
    paraphrases = [c for c in calibration_items(labels, QUESTIONS) if c.kind == "paraphrase"]
    assert len(paraphrases) == 6 * 3
    for c in paraphrases:
        assert c.item.human_answer == labels[c.clip_id][c.item.field] and c.item.question == QUESTIONS[c.item.field]
        assert c.partner_clip_id is None and c.item.model_answer != c.item.human_answer
        if c.item.field != "road_type":
            assert answer_key(c.item.field, c.item.model_answer) == answer_key(c.item.field, c.item.human_answer)


def test_the_constant_is_the_most_common_answer_asked_only_where_it_is_wrong():
    labels = _labels(6)
    labels["clip00"]["weather"] = "clear SKIES"  # the same canonical answer, spelled less commonly
    constants = constant_answers(labels, QUESTIONS)
    assert constants["weather"].value == "Clear skies" and constants["weather"].share == pytest.approx(4 / 6)
    assert constants["rule_violation"].share == 1.0
    assert constants["road_type"].value == "road number 0"  # all unique: the tie goes to the smallest key
    items = calibration_items(labels, QUESTIONS)
    constant = [c for c in items if c.kind == "constant"]
    assert {(c.clip_id, c.item.field) for c in constant if c.item.field == "weather"} == {
        ("clip02", "weather"),
        ("clip05", "weather"),
    }
    assert not [c for c in constant if c.item.field == "rule_violation"]
    assert len([c for c in constant if c.item.field == "road_type"]) == 5
    for c in items:
        if c.kind == "other":
            assert c.partner_clip_id != c.clip_id and c.item.model_answer == labels[c.partner_clip_id][c.item.field]
            assert answer_key(c.item.field, c.item.model_answer) != answer_key(c.item.field, c.item.human_answer)


def test_a_perfect_judge_passes_and_the_table_has_every_kind_per_field():
    labels = _labels(6)
    items = calibration_items(labels, QUESTIONS)
    shares = {f: c.share for f, c in constant_answers(labels, QUESTIONS).items()}
    report = summarize_calibration(items, _verdicts(items, _perfect), constant_shares=shares)
    assert report.passed and (report.paraphrase_mean, report.constant_mean, report.other_mean) == (5.0, 1.0, 1.0)
    assert report.failed == 0 and report.sampled_clips == 6 and report.skipped_fields == ("rule_violation",)
    table = report.by_field.set_index("field")
    assert list(report.by_field.columns) == list(TABLE_COLUMNS)
    assert table.loc["weather", "gap"] == 4.0 and table.loc["weather", "constant_share"] == pytest.approx(4 / 6)
    assert (table.loc["weather", "n_paraphrase"], table.loc["weather", "n_constant"]) == (6, 2)
    assert table.loc["rule_violation", "verdict"] == "skipped" and math.isnan(table.loc["rule_violation", "gap"])
    assert "smallest: weather 4.00" in report.reason


def test_one_field_the_judge_cannot_separate_fails_the_whole_calibration():
    """v1 averaged over fields and passed this judge, naming road_type only as 'weak'."""
    items = calibration_items(_labels(6), QUESTIONS)
    report = summarize_calibration(items, _verdicts(items, lambda c: 4 if c.item.field == "road_type" else _perfect(c)))
    assert not report.passed and report.missed_fields == ("road_type",)
    assert "gap < 2.0 on 1 field(s) (road_type 0.00)" in report.reason


def test_the_gap_is_taken_against_the_better_wrong_answer():
    items = calibration_items(_labels(6), QUESTIONS)
    table = calibration_table(items, _verdicts(items, lambda c: {"paraphrase": 5, "constant": 4, "other": 1}[c.kind]))
    assert table.set_index("field").loc["weather", "gap"] == 1.0


def test_a_judge_that_always_says_5_fails_on_every_gap_and_one_that_says_1_on_the_paraphrase_mean():
    items = calibration_items(_labels(6), QUESTIONS)
    always_5 = summarize_calibration(items, _verdicts(items, lambda c: 5))
    assert not always_5.passed and always_5.missed_fields == ("weather", "road_type")
    always_1 = summarize_calibration(items, _verdicts(items, lambda c: 1))
    assert not always_1.passed and "paraphrase mean 1.00 < 4.0" in always_1.reason


def test_failed_verdicts_are_counted_and_left_out_of_the_means():
    items = calibration_items(_labels(6), QUESTIONS)
    verdicts = _verdicts(items, _perfect)
    verdicts[0] = JudgeVerdict(score=None, reply="", error="HTTP 500")
    verdicts[1] = JudgeVerdict(score=None, reply="I cannot say.")
    report = summarize_calibration(items, verdicts)
    assert report.failed == 2 and report.n_paraphrase + report.n_constant + report.n_other == len(items) - 2
    assert report.passed and (report.paraphrase_mean, report.other_mean) == (5.0, 1.0)


def test_nothing_scored_or_nothing_to_compare_fails_with_a_clear_reason():
    items = calibration_items(_labels(2), QUESTIONS)
    report = summarize_calibration(items, [JudgeVerdict(score=None, reply="", error="down") for _ in items])
    assert not report.passed and report.reason == f"nothing could be scored: all {len(items)} judge verdicts failed"
    empty = summarize_calibration([], [])
    assert not empty.passed and "no labelled clips" in empty.reason
    same = {f"c{i}": {"rule_violation": "False"} for i in range(3)}
    agreed = calibration_items(same, QUESTIONS)
    assert "the labels all agree" in summarize_calibration(agreed, _verdicts(agreed, _perfect)).reason
    with pytest.raises(ValueError):
        summarize_calibration(items, [])


def test_labels_of_skips_unlabelled_clips():
    clips = pd.DataFrame({"clip_id": ["a", "b"], "label_json": ['{"weather": "Rainy"}', None]})
    assert labels_of(clips) == {"a": {"weather": "Rainy"}}
    assert labels_of(pd.DataFrame()) == {}


@pytest.fixture(scope="module")
def real_and_synthetic():
    labels = {clip_id: label for clip_id, _, label in (plan_clip(0, i) for i in range(24))}  # clip 23 breaks a rule
    labels[REAL_CLIP_ID] = json.loads((REAL_CLIP_DIR / f"{REAL_CLIP_ID}.label.json").read_text())
    questions = load_prompt_set().questions
    items = calibration_items(labels, questions, sample=len(labels))
    shares = {f: c.share for f, c in constant_answers(labels, questions).items()}
    return labels, items, shares


def test_the_offline_judge_separates_right_from_wrong_on_every_field_and_v1_did_not(real_and_synthetic):
    labels, items, shares = real_and_synthetic
    new = OfflineEmbeddingJudge().with_reference_labels(labels.values())
    report = summarize_calibration(items, new.judge([c.item for c in items]), constant_shares=shares)
    assert report.passed, report.reason
    assert report.failed == 0 and report.skipped_fields == () and report.paraphrase_mean >= 4.5
    assert (report.by_field["gap"] >= 2.5).all(), report.by_field
    old = OfflineEmbeddingJudge(mode="similarity")
    old._model = new.model  # noqa: SLF001
    v1 = summarize_calibration(items, old.judge([c.item for c in items]), constant_shares=shares)
    assert not v1.passed and {"safety_analysis", "lane_type"} <= set(v1.missed_fields)
