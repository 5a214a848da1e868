"""Judge calibration: which self/other items are asked, and how the verdicts decide pass or fail."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from avdag.core.captioning.prompts import load_prompt_set
from avdag.core.judging.calibration import answer_key, calibration_items, labels_of, summarize_calibration
from avdag.core.judging.judges import JudgeVerdict
from avdag.core.judging.offline_judge import OfflineEmbeddingJudge
from avdag.demo.sample_batch import REAL_CLIP_DIR, REAL_CLIP_ID
from avdag.demo.synthetic_clips import plan_clip

QUESTIONS = {"weather": "What is the weather?", "road_type": "What kind of road?", "rule_violation": "Any law broken?"}


def _labels(n: int) -> dict[str, dict]:
    return {
        f"clip{i:02d}": {
            "weather": ["Clear skies", "Rainy"][i % 2],
            "road_type": f"road {i}",
            "rule_violation": "False",
        }
        for i in range(n)
    }


def _verdicts(items, score_of) -> list[JudgeVerdict]:
    return [JudgeVerdict(score=score_of(c), reply=f"<answer>{score_of(c)}</answer>") for c in items]


def _perfect(c) -> int:
    return 5 if c.kind == "self" else 1


def test_sampling_is_deterministic_and_bounded():
    labels = _labels(20)
    items = calibration_items(labels, QUESTIONS, sample=5, seed=3)
    assert items == calibration_items(dict(reversed(labels.items())), QUESTIONS, sample=5, seed=3)
    assert len({c.clip_id for c in items}) == 5
    assert {c.clip_id for c in items} != {c.clip_id for c in calibration_items(labels, QUESTIONS, sample=5, seed=4)}
    assert len({c.clip_id for c in calibration_items(_labels(3), QUESTIONS, sample=5)}) == 3
    assert calibration_items({}, QUESTIONS) == []


def test_self_items_repeat_the_human_answer_and_other_partners_really_differ():
    labels = _labels(6)
    items = calibration_items(labels, QUESTIONS)
    for c in items:
        assert c.item.human_answer == labels[c.clip_id][c.item.field] and c.item.question == QUESTIONS[c.item.field]
        if c.kind == "self":
            assert c.partner_clip_id is None and c.item.model_answer == c.item.human_answer
        else:
            assert c.partner_clip_id != c.clip_id and c.item.model_answer == labels[c.partner_clip_id][c.item.field]
            assert answer_key(c.item.field, c.item.model_answer) != answer_key(c.item.field, c.item.human_answer)


def test_fields_where_every_clip_agrees_get_no_other_item_and_are_reported_skipped():
    labels = _labels(4)
    labels["clip00"]["rule_violation"] = "false"  # the same canonical answer, spelled differently
    labels["clip01"]["weather"] = "clear skies"  # canonical "Clear skies": clip00 and clip02 are not partners
    items = calibration_items(labels, QUESTIONS)
    assert not [c for c in items if c.kind == "other" and c.item.field == "rule_violation"]
    assert len([c for c in items if c.kind == "self" and c.item.field == "rule_violation"]) == 4
    weather_partners = {
        c.partner_clip_id for c in items if c.kind == "other" and c.item.field == "weather" and c.clip_id == "clip01"
    }
    assert weather_partners == {"clip03"}
    report = summarize_calibration(items, _verdicts(items, _perfect))
    assert report.skipped_fields == ("rule_violation",)


def test_a_perfect_judge_passes():
    items = calibration_items(_labels(6), QUESTIONS)
    report = summarize_calibration(items, _verdicts(items, _perfect))
    assert report.passed and (report.self_mean, report.other_mean, report.gap) == (5.0, 1.0, 4.0)
    assert report.n_self == 18 and report.n_other == 12 and report.failed == 0 and report.sampled_clips == 6
    assert list(report.by_field.columns) == ["field", "self_mean", "other_mean", "gap", "n_self", "n_other"]
    assert report.by_field.set_index("field").loc["weather", "gap"] == 4.0
    assert "gap 4.00" in report.reason and report.weak_fields == ()


def test_a_field_the_judge_cannot_separate_is_named_even_when_the_judge_passes_overall():
    items = calibration_items(_labels(6), QUESTIONS)
    report = summarize_calibration(items, _verdicts(items, lambda c: 4 if c.item.field == "road_type" else _perfect(c)))
    assert report.passed and report.weak_fields == ("road_type",)


def test_a_judge_that_always_says_5_fails_on_the_gap():
    items = calibration_items(_labels(6), QUESTIONS)
    report = summarize_calibration(items, _verdicts(items, lambda c: 5))
    assert not report.passed and report.gap == 0.0
    assert "gap 0.00 < 2.0" in report.reason and "self mean" not in report.reason


def test_a_judge_that_always_says_1_fails_on_the_self_mean():
    items = calibration_items(_labels(6), QUESTIONS)
    report = summarize_calibration(items, _verdicts(items, lambda c: 1))
    assert not report.passed and report.self_mean == 1.0
    assert "self mean 1.00 < 4.0" in report.reason


def test_failed_verdicts_are_counted_and_left_out_of_the_means():
    items = calibration_items(_labels(6), QUESTIONS)
    verdicts = _verdicts(items, _perfect)
    verdicts[0] = JudgeVerdict(score=None, reply="", error="HTTP 500")
    verdicts[1] = JudgeVerdict(score=None, reply="I cannot say.")
    report = summarize_calibration(items, verdicts)
    assert report.failed == 2 and report.n_self + report.n_other == len(items) - 2
    assert report.passed and (report.self_mean, report.other_mean) == (5.0, 1.0)


def test_nothing_scored_fails_with_a_clear_reason():
    items = calibration_items(_labels(2), QUESTIONS)
    report = summarize_calibration(items, [JudgeVerdict(score=None, reply="", error="down") for _ in items])
    assert not report.passed and report.reason == f"nothing could be scored: all {len(items)} judge verdicts failed"
    empty = summarize_calibration([], [])
    assert not empty.passed and "no labelled clips" in empty.reason
    assert not summarize_calibration(items[:1], _verdicts(items[:1], _perfect)).passed  # self items only
    with pytest.raises(ValueError):
        summarize_calibration(items, [])


def test_labels_of_skips_unlabelled_clips():
    clips = pd.DataFrame({"clip_id": ["a", "b"], "label_json": ['{"weather": "Rainy"}', None]})
    assert labels_of(clips) == {"a": {"weather": "Rainy"}}


def test_offline_judge_separates_the_real_and_synthetic_labels():
    labels = {clip_id: label for clip_id, _, label in (plan_clip(0, i) for i in range(5))}
    labels[REAL_CLIP_ID] = json.loads((REAL_CLIP_DIR / f"{REAL_CLIP_ID}.label.json").read_text())
    items = calibration_items(labels, load_prompt_set().questions)
    assert REAL_CLIP_ID in {c.clip_id for c in items}
    report = summarize_calibration(items, OfflineEmbeddingJudge().judge([c.item for c in items]))
    assert report.passed, report.reason
    assert report.self_mean == 5.0 and report.other_mean < 3.0 and report.failed == 0
