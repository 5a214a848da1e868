"""LLM-as-judge bookkeeping from the AV captioning recipe, as pure functions.

The recipe's judge (`avha_judge.py`) asks, per field, how closely the model's answer matches
the human label, reads a 1-5 score from the reply, and reports per-question means. These
functions carry over its rules so that every judge implementation (and every report) agrees
on which fields were judged, how a reply becomes a score, and what a summary means.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

NO_MODEL_ANSWER = "No answer from LLM."
NO_HUMAN_ANSWER = "No ground truth answer from human."

MIN_SCORE = 1
MAX_SCORE = 5

_NAMED_PLACEHOLDER = re.compile(r"\{(question|human_answer|model_answer)\}")
_ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.IGNORECASE | re.DOTALL)
_SCORE_DIGIT = re.compile(r"[1-5]")

SUMMARY_COLUMNS = ("field", "num_results", "num_scores", "mean_score", "success_rate", "mean_spread", "max_spread")


def format_judge_prompt(template: str, question: str, human_answer: Any, model_answer: Any) -> str:
    """The judge's user turn, with values rendered by str() exactly as the recipe's `%s` does.

    Accepts the recipe's three-`%s` template or one with {question} {human_answer}
    {model_answer} placeholders. Named placeholders are filled in a single pass, so an answer
    that happens to contain "{model_answer}" is never substituted again, and other braces in
    the template (say, a JSON example) are left alone.
    """
    values = {"question": str(question), "human_answer": str(human_answer), "model_answer": str(model_answer)}
    if _NAMED_PLACEHOLDER.search(template):
        return _NAMED_PLACEHOLDER.sub(lambda match: values[match.group(1)], template)
    try:
        return template % (values["question"], values["human_answer"], values["model_answer"])
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "judge user template needs three %s slots or {question} {human_answer} {model_answer}"
        ) from exc


def tagged_answer(reply: str) -> str | None:
    """The text of the last <answer>...</answer> tag of a judge reply (brackets stripped), or None."""
    tagged = _ANSWER_TAG.findall(reply)
    return tagged[-1].strip().strip("[]").strip() if tagged else None


def parse_judge_score(reply: str | None) -> int | None:
    """The 1-5 score in a judge reply, or None when the reply holds no usable score.

    Recipe rule: the text of the (last) <answer>...</answer> tag, else the last digit 1-5
    anywhere in the reply; anything that is not an integer in 1..5 is None, so a malformed
    reply lowers the success rate instead of skewing the mean.
    """
    if not reply:
        return None
    candidate = tagged_answer(reply)
    if candidate is None:
        digits = _SCORE_DIGIT.findall(reply)
        candidate = digits[-1] if digits else ""
    return _score_in_range(candidate)


def is_out_of_range(reply: str | None) -> bool:
    """The reply's <answer> holds an integer, but not one in 1..5 (a rubric slip, not a missing score)."""
    tagged = tagged_answer(reply or "")
    return tagged is not None and re.fullmatch(r"-?\d+", tagged) is not None and _score_in_range(tagged) is None


def _score_in_range(text: str) -> int | None:
    try:
        score = int(text)
    except ValueError:
        return None
    return score if MIN_SCORE <= score <= MAX_SCORE else None


@dataclass(frozen=True)
class JudgeItem:
    """One question the judge must answer: does `model_answer` match `human_answer`?"""

    field: str
    question: str
    human_answer: Any
    model_answer: Any


def plan_judge_items(
    human_label: dict[str, Any],
    model_answer: dict[str, Any] | None,
    questions: dict[str, str],
) -> tuple[list[JudgeItem], dict[str, str]]:
    """Split the questions into judge calls and fields scored None without a call.

    Follows the recipe: a field is judged only when both the human label and the model's
    answer have it; a model answer that failed to parse (None, or not a JSON object) counts
    as missing every field. Returns (items in question order, {field: reason}).
    """
    answer = model_answer if isinstance(model_answer, dict) else {}
    items: list[JudgeItem] = []
    skipped: dict[str, str] = {}
    for field, question in questions.items():
        if field in human_label and field in answer:
            items.append(JudgeItem(field, question, human_label[field], answer[field]))
        elif field not in answer:
            skipped[field] = NO_MODEL_ANSWER
        else:
            skipped[field] = NO_HUMAN_ANSWER
    return items, skipped


def summarize_scores(rows: pd.DataFrame) -> pd.DataFrame:
    """Per-question num_results, num_scores, mean_score and success_rate, as the recipe reports.

    One row per field, in the order fields first appear in `rows`. Unlike the recipe (which
    divides by count + 1e-5), a field with no scores gets a NaN mean, so "never scored" can't
    be mistaken for "scored 0". mean_spread / max_spread: how far repeated asks of one item
    disagreed (`score_spread`, max - min), NaN where items were asked once.
    """
    if rows.empty:
        return pd.DataFrame({column: [] for column in SUMMARY_COLUMNS})
    scores = pd.to_numeric(rows["score"], errors="coerce")
    no_spreads = pd.Series(math.nan, index=rows.index)  # score rows written before repeats
    spreads = pd.to_numeric(rows["score_spread"], errors="coerce") if "score_spread" in rows else no_spreads
    summaries = [
        _summarize_field(field, scores[rows["field"] == field], spreads[rows["field"] == field])
        for field in pd.unique(rows["field"])
    ]
    return pd.DataFrame(summaries, columns=list(SUMMARY_COLUMNS))


def _summarize_field(field: str, scores: pd.Series, spreads: pd.Series) -> dict[str, Any]:
    present = scores.dropna()
    spread = spreads.dropna()
    num_results = int(len(scores))
    num_scores = int(len(present))
    return {
        "field": field,
        "num_results": num_results,
        "num_scores": num_scores,
        "mean_score": float(present.mean()) if num_scores else math.nan,
        "success_rate": num_scores / num_results if num_results else math.nan,
        "mean_spread": float(spread.mean()) if len(spread) else math.nan,
        "max_spread": float(spread.max()) if len(spread) else math.nan,
    }
