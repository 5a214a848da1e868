"""Judge calibration: can the judge tell a perfect answer from a wrong one?

The recipe's judge score is only meaningful if the judge separates the two. So, on a sample of
labelled clips, the judge scores each human answer against itself ("self": should be ~5) and
against another clip's different human answer to the same question ("other": should be low).
The gap between the two means says how much a score difference can be trusted; a judge that
cannot tell them apart fails.
"""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from avdag.core.common.labels import MULTIPLE_CHOICE_FIELDS, normalize_text
from avdag.core.judging.items import JudgeItem
from avdag.core.judging.judges import JudgeVerdict
from avdag.core.judging.offline_judge import canonical_multiple_choice

FIELD_COLUMNS = ("field", "self_mean", "other_mean", "gap", "n_self", "n_other")
# On the 1-5 rubric: a perfect answer should score at least 4, and 2 points above a wrong one.
MIN_GAP = 2.0
MIN_SELF_MEAN = 4.0


@dataclass(frozen=True)
class CalibrationItem:
    """One judge question: a clip's human answer against itself ("self") or a partner's ("other")."""

    kind: Literal["self", "other"]
    clip_id: str
    partner_clip_id: str | None
    item: JudgeItem


def labels_of(clips: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """clip_id -> human label, from a raw_clips table (unlabelled clips left out)."""
    labelled = clips.dropna(subset=["label_json"])
    return {clip_id: json.loads(text) for clip_id, text in zip(labelled["clip_id"], labelled["label_json"])}


def answer_key(field: str, value: Any) -> str:
    """What two answers must share to count as the same: canonical choice, case-folded text, sorted lists."""
    if field in MULTIPLE_CHOICE_FIELDS:
        canonical = canonical_multiple_choice(field, value)
        value = value if canonical is None else canonical
    elif isinstance(value, str):
        value = normalize_text(value).casefold()
    elif isinstance(value, list):
        value = sorted(value, key=str)
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def calibration_items(
    labels: dict[str, dict[str, Any]], questions: dict[str, str], *, sample: int = 8, seed: int = 0
) -> list[CalibrationItem]:
    """Self and other items for up to `sample` clips; the same labels and seed give the same items.

    Partners come from all labelled clips, never one whose answer equals this clip's (by
    `answer_key`); a field where every clip agrees gets no "other" item.
    """
    ids = sorted(labels)
    sampled = sorted(random.Random(seed).sample(ids, min(sample, len(ids))))
    items: list[CalibrationItem] = []
    for clip_id in sampled:
        label = labels[clip_id]
        for field, question in questions.items():
            if field not in label:
                continue
            human = label[field]
            items.append(CalibrationItem("self", clip_id, None, JudgeItem(field, question, human, human)))
            own = answer_key(field, human)
            partners = [o for o in ids if field in labels[o] and answer_key(field, labels[o][field]) != own]
            if partners:
                partner = random.Random(f"{seed}:{clip_id}:{field}").choice(partners)
                items.append(
                    CalibrationItem(
                        "other", clip_id, partner, JudgeItem(field, question, human, labels[partner][field])
                    )
                )
    return items


@dataclass(frozen=True, eq=False)
class CalibrationReport:
    """Self vs other means over scored verdicts; failed verdicts are counted, not averaged."""

    self_mean: float
    other_mean: float
    gap: float
    n_self: int
    n_other: int
    failed: int
    sampled_clips: int
    skipped_fields: tuple[str, ...]
    weak_fields: tuple[str, ...]  # gap below min_gap on that field alone: read its scores with care
    by_field: pd.DataFrame
    passed: bool
    reason: str


def _mean(scores: list[int]) -> float:
    return sum(scores) / len(scores) if scores else math.nan


def summarize_calibration(
    items: list[CalibrationItem],
    verdicts: list[JudgeVerdict],
    *,
    min_gap: float = MIN_GAP,
    min_self_mean: float = MIN_SELF_MEAN,
) -> CalibrationReport:
    """Means, gap and pass/fail: self mean >= min_self_mean and gap >= min_gap, over scored items of both kinds."""
    if len(items) != len(verdicts):
        raise ValueError(f"{len(items)} calibration items but {len(verdicts)} verdicts")
    scored = [(c, v.score) for c, v in zip(items, verdicts) if v.error is None and v.score is not None]
    scores = {kind: [s for c, s in scored if c.kind == kind] for kind in ("self", "other")}
    self_mean, other_mean = _mean(scores["self"]), _mean(scores["other"])
    gap = self_mean - other_mean
    fields = list(dict.fromkeys(c.item.field for c in items))
    by_field = pd.DataFrame([_field_row(field, scored) for field in fields], columns=list(FIELD_COLUMNS))
    has_other = {c.item.field for c in items if c.kind == "other"}
    problems = _problems(len(items), len(scored), scores, self_mean, gap, min_gap, min_self_mean)
    reason = (
        "; ".join(problems)
        if problems
        else (
            f"self {self_mean:.2f} vs other {other_mean:.2f}: gap {gap:.2f} >= {min_gap}, self mean >= {min_self_mean}"
        )
    )
    return CalibrationReport(
        self_mean=self_mean,
        other_mean=other_mean,
        gap=gap,
        n_self=len(scores["self"]),
        n_other=len(scores["other"]),
        failed=len(items) - len(scored),
        sampled_clips=len({c.clip_id for c in items}),
        skipped_fields=tuple(field for field in fields if field not in has_other),
        weak_fields=tuple(
            row.field for row in by_field.itertuples() if row.n_self and row.n_other and row.gap < min_gap
        ),
        by_field=by_field,
        passed=not problems,
        reason=reason,
    )


def _field_row(field: str, scored: list[tuple[CalibrationItem, int]]) -> dict[str, Any]:
    own = [s for c, s in scored if c.item.field == field and c.kind == "self"]
    other = [s for c, s in scored if c.item.field == field and c.kind == "other"]
    return {
        "field": field,
        "self_mean": _mean(own),
        "other_mean": _mean(other),
        "gap": _mean(own) - _mean(other),
        "n_self": len(own),
        "n_other": len(other),
    }


def _problems(n_items, n_scored, scores, self_mean, gap, min_gap, min_self_mean) -> list[str]:
    """Why the judge fails calibration, in words; empty when it passes."""
    if n_items == 0:
        return ["no calibration items: no labelled clips to sample"]
    if n_scored == 0:
        return [f"nothing could be scored: all {n_items} judge verdicts failed"]
    problems = [f"no scored {kind} items" for kind in ("self", "other") if not scores[kind]]
    if scores["self"] and self_mean < min_self_mean:
        problems.append(
            f"self mean {self_mean:.2f} < {min_self_mean}: the judge does not give a perfect answer a high score"
        )
    if scores["self"] and scores["other"] and gap < min_gap:
        problems.append(f"gap {gap:.2f} < {min_gap}: the judge cannot tell a perfect answer from another clip's")
    return problems
