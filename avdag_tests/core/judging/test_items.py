"""Judge prompt formatting, score parsing, planning and summaries follow the recipe's judge."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from avdag.core.common.labels import FIELDS
from avdag.core.judging.items import (
    NO_HUMAN_ANSWER,
    NO_MODEL_ANSWER,
    JudgeItem,
    format_judge_prompt,
    parse_judge_score,
    plan_judge_items,
    summarize_scores,
)

RECIPE_USER_TEMPLATE = """
Given the question ``%s'', here are the two responses to compare:

*** Human response ***:
%s

*** LLM response ***:
%s

Provide your answer in the following format:

[Reason for giving the score.]

<answer>[Single digit between 1 and 5]</answer>
"""

QUESTIONS_PATH = Path("/work/shared/reference/cookbook-av-caption-vqa/score_question.json")


@pytest.fixture(scope="module")
def questions() -> dict[str, str]:
    if QUESTIONS_PATH.exists():
        return json.loads(QUESTIONS_PATH.read_text())
    return {field: f"Question about {field}?" for field in FIELDS}


def _label() -> dict[str, object]:
    label: dict[str, object] = {field: f"human {field}" for field in FIELDS}
    label.update(interactive_expanded_metaaction=["Vehicle following"], driving_difficulty=3, additional_map_rules=None)
    return label


# --------------------------------------------------------------------------- format_judge_prompt


def test_percent_template_renders_values_like_recipe() -> None:
    prompt = format_judge_prompt(RECIPE_USER_TEMPLATE, "What category?", ["Vehicle following"], None)
    assert "Given the question ``What category?''" in prompt
    assert "*** Human response ***:\n['Vehicle following']\n" in prompt
    assert "*** LLM response ***:\nNone\n" in prompt
    assert prompt == RECIPE_USER_TEMPLATE % ("What category?", ["Vehicle following"], None)


def test_named_template_renders_values_with_str() -> None:
    template = 'Q: {question}\nHuman: {human_answer}\nModel: {model_answer}\nJSON like {"a": 1} stays.'
    prompt = format_judge_prompt(template, "Rate difficulty", 3, "{model_answer}")
    assert prompt == 'Q: Rate difficulty\nHuman: 3\nModel: {model_answer}\nJSON like {"a": 1} stays.'


def test_template_without_slots_is_rejected() -> None:
    with pytest.raises(ValueError):
        format_judge_prompt("no slots here", "q", "h", "m")


# --------------------------------------------------------------------------- parse_judge_score


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Both say light rain.\n\n<answer>5</answer>", 5),
        ("Reason.<answer> 3 </answer>", 3),
        ("Reason.<ANSWER>[2]</ANSWER>", 2),
        ("First thought <answer>2</answer>, final <answer>4</answer>", 4),
        ("I would give it a 2, maybe a 4", 4),  # untagged: last digit 1-5
        ("Score 4 of 10", 1),  # recipe's fallback is a single-digit regex: the '1' of "10" wins
        ("Between 3 and 45", 5),  # multi-digit numbers are read digit by digit
        ("<answer>7</answer>", None),
        ("<answer>0</answer>", None),
        ("<answer>45</answer>", None),
        ("<answer>four</answer>", None),
        ("<answer></answer> then 3", None),  # a tag wins over the fallback, even when empty
        ("no digits at all", None),
        ("only 6, 7, 8 and 9", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_judge_score(reply: str | None, score: int | None) -> None:
    assert parse_judge_score(reply) == score


# --------------------------------------------------------------------------- plan_judge_items


def test_full_answer_judges_every_field_in_question_order(questions: dict[str, str]) -> None:
    label = _label()
    answer = {field: f"model {field}" for field in reversed(FIELDS)}
    items, skipped = plan_judge_items(label, answer, questions)
    assert [item.field for item in items] == list(questions)
    assert skipped == {}
    weather = items[0]
    assert weather == JudgeItem("weather", questions["weather"], "human weather", "model weather")


def test_partial_answer_skips_missing_fields_without_a_call(questions: dict[str, str]) -> None:
    answer = {"weather": "Light rain", "interactive_expanded_metaaction": None}
    items, skipped = plan_judge_items(_label(), answer, questions)
    assert [item.field for item in items] == ["weather", "interactive_expanded_metaaction"]
    assert items[1].model_answer is None  # present-but-null is an answer, and is judged
    assert set(skipped) == set(questions) - {"weather", "interactive_expanded_metaaction"}
    assert set(skipped.values()) == {NO_MODEL_ANSWER}


@pytest.mark.parametrize("unparsed", [None, ["not", "an", "object"], "raw text"])
def test_unparsed_answer_counts_as_missing_everywhere(questions: dict[str, str], unparsed: object) -> None:
    items, skipped = plan_judge_items(_label(), unparsed, questions)  # type: ignore[arg-type]
    assert items == []
    assert skipped == {field: NO_MODEL_ANSWER for field in questions}


def test_field_missing_from_human_label(questions: dict[str, str]) -> None:
    label = _label()
    del label["safety_analysis"]
    answer = {field: "x" for field in FIELDS}
    items, skipped = plan_judge_items(label, answer, questions)
    assert "safety_analysis" not in [item.field for item in items]
    assert skipped == {"safety_analysis": NO_HUMAN_ANSWER}


def test_field_missing_from_both_is_reported_as_no_model_answer(questions: dict[str, str]) -> None:
    label = _label()
    del label["lane_type"]
    _, skipped = plan_judge_items(label, {}, questions)
    assert skipped["lane_type"] == NO_MODEL_ANSWER  # recipe checks the model side first


# --------------------------------------------------------------------------- summarize_scores


def test_summarize_scores_numbers() -> None:
    rows = pd.DataFrame(
        {
            "field": ["weather", "lighting", "weather", "weather", "safety_analysis", "lighting", "weather"],
            "score": [5, None, 3, None, None, 4, 4],
        }
    )
    summary = summarize_scores(rows).set_index("field")
    assert list(summary.index) == ["weather", "lighting", "safety_analysis"]  # first-appearance order

    weather = summary.loc["weather"]
    assert (weather.num_results, weather.num_scores) == (4, 3)
    assert weather.mean_score == pytest.approx(4.0)
    assert weather.success_rate == pytest.approx(0.75)

    lighting = summary.loc["lighting"]
    assert (lighting.num_results, lighting.num_scores, lighting.mean_score) == (2, 1, 4.0)
    assert lighting.success_rate == pytest.approx(0.5)

    never_scored = summary.loc["safety_analysis"]
    assert (never_scored.num_results, never_scored.num_scores) == (1, 0)
    assert math.isnan(never_scored.mean_score)
    assert never_scored.success_rate == 0.0


def test_summarize_scores_accepts_nullable_integer_and_empty_frames() -> None:
    rows = pd.DataFrame({"field": ["weather", "weather"], "score": pd.array([2, pd.NA], dtype="Int64")})
    summary = summarize_scores(rows)
    first = summary.iloc[0].to_dict()
    assert math.isnan(first.pop("mean_spread")) and math.isnan(first.pop("max_spread"))  # no repeats recorded
    assert first == {
        "field": "weather",
        "num_results": 2,
        "num_scores": 1,
        "mean_score": 2.0,
        "success_rate": 0.5,
    }
    empty = summarize_scores(pd.DataFrame({"field": [], "score": []}))
    assert empty.empty
    assert list(empty.columns) == [
        "field",
        "num_results",
        "num_scores",
        "mean_score",
        "success_rate",
        "mean_spread",
        "max_spread",
    ]


def test_summarize_scores_reports_the_spread_of_repeated_asks_per_question() -> None:
    rows = pd.DataFrame(
        {
            "field": ["weather", "weather", "weather", "lighting"],
            "score": pd.array([3, 4, pd.NA, 5], dtype="Int64"),
            "score_spread": pd.array([0, 2, pd.NA, pd.NA], dtype="Int64"),
        }
    )
    summary = summarize_scores(rows).set_index("field")
    assert (summary.loc["weather", "mean_spread"], summary.loc["weather", "max_spread"]) == (1.0, 2.0)
    assert math.isnan(summary.loc["lighting", "mean_spread"])
