"""Judge calibration: does the judge score a right answer clearly above a wrong one, on every field?

A judge score means something only if the judge separates right from wrong. So, on a sample of
labelled clips, the judge scores each human answer against three kinds of model answer:

- "paraphrase": the human answer in other words (`paraphrase_answer`): right, should score ~5;
- "constant": the field's most common answer across the labels, as a model that memorised one
  template would write for every clip: wrong wherever it differs from the clip's answer;
- "other": another clip's different human answer: wrong.

The check is per field: paraphrase mean minus the larger of the constant and other means (the
gap) must reach MIN_GAP on every field that has wrong answers to compare. Identical strings are
never asked (v1 did, and every judge short-circuits them to 5).

Constant answers are asked only on clips whose answer differs from the constant. The constant is
right on a share p of clips (`constant_share`, reported); an exact-match judge gives it 5 there
and 1 elsewhere, a mean of 1 + 4p over all clips that says only how skewed the labels are. What
the judge must show is that, where the constant is wrong, it scores like any wrong answer.
"""

from __future__ import annotations

import json
import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pandas as pd

from avdag.core.common.labels import MULTIPLE_CHOICE_FIELDS, normalize_text
from avdag.core.judging.items import JudgeItem
from avdag.core.judging.judges import JudgeVerdict
from avdag.core.judging.offline_judge import canonical_multiple_choice
from avdag.core.judging.paraphrase import paraphrase_answer

Kind = Literal["paraphrase", "constant", "other"]
KINDS: tuple[Kind, ...] = ("paraphrase", "constant", "other")
TABLE_COLUMNS = (
    "field",
    "paraphrase_mean",
    "constant_mean",
    "other_mean",
    "gap",
    "constant_share",
    "n_paraphrase",
    "n_constant",
    "n_other",
    "verdict",
)
# On the 1-5 rubric: a right answer in other words should score at least 4 on average, and on every
# field 2 points above the better of the wrong answers.
MIN_GAP = 2.0
MIN_PARAPHRASE_MEAN = 4.0
DEFAULT_SAMPLE = 10


@dataclass(frozen=True)
class CalibrationItem:
    """One judge question: a clip's human answer against a paraphrase, the constant or a partner's answer."""

    kind: Kind
    clip_id: str
    partner_clip_id: str | None  # "other" only: whose answer the model answer is
    item: JudgeItem


@dataclass(frozen=True)
class ConstantAnswer:
    """A field's most common answer, and the share of labelled clips that gave it."""

    value: Any
    share: float


def labels_of(clips: pd.DataFrame) -> dict[str, dict[str, Any]]:
    """clip_id -> human label, from a raw_clips table (unlabelled clips left out)."""
    if clips.empty or "label_json" not in clips:
        return {}
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


def constant_answers(labels: Mapping[str, Mapping[str, Any]], fields: Iterable[str]) -> dict[str, ConstantAnswer]:
    """Field -> its most common answer over `labels` (ties: the smaller key), in its commonest spelling."""
    constants = {}
    for field in fields:
        answers = {clip_id: labels[clip_id][field] for clip_id in sorted(labels) if field in labels[clip_id]}
        if not answers:
            continue
        counts = Counter(answer_key(field, value) for value in answers.values())
        key, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        spellings = Counter(
            json.dumps(value, sort_keys=True, ensure_ascii=False)
            for value in answers.values()
            if answer_key(field, value) == key
        )
        value = json.loads(min(spellings.items(), key=lambda kv: (-kv[1], kv[0]))[0])
        constants[field] = ConstantAnswer(value, count / len(answers))
    return constants


def calibration_items(
    labels: dict[str, dict[str, Any]], questions: dict[str, str], *, sample: int = DEFAULT_SAMPLE, seed: int = 0
) -> list[CalibrationItem]:
    """Paraphrase, constant and other items for up to `sample` clips; the same labels and seed give the same items.

    The constant comes from all labelled clips and is asked only where it differs from the clip's
    answer (by `answer_key`). Partners come from all labelled clips too, never one whose answer
    equals this clip's; a field where every clip agrees gets no constant and no other item.
    """
    ids = sorted(labels)
    sampled = sorted(random.Random(seed).sample(ids, min(sample, len(ids))))
    constants = constant_answers(labels, questions)
    items: list[CalibrationItem] = []
    for clip_id in sampled:
        label = labels[clip_id]
        for field, question in questions.items():
            if field not in label:
                continue
            human = label[field]
            own = answer_key(field, human)
            items.append(
                CalibrationItem(
                    "paraphrase", clip_id, None, JudgeItem(field, question, human, paraphrase_answer(field, human))
                )
            )
            constant = constants[field].value
            if answer_key(field, constant) != own:
                items.append(CalibrationItem("constant", clip_id, None, JudgeItem(field, question, human, constant)))
            partners = [o for o in ids if field in labels[o] and answer_key(field, labels[o][field]) != own]
            if partners:
                partner = random.Random(f"{seed}:{clip_id}:{field}").choice(partners)
                items.append(
                    CalibrationItem(
                        "other", clip_id, partner, JudgeItem(field, question, human, labels[partner][field])
                    )
                )
    return items


def _mean(scores: list[int]) -> float:
    return sum(scores) / len(scores) if scores else math.nan


def _scored(items: list[CalibrationItem], verdicts: list[JudgeVerdict]) -> list[tuple[CalibrationItem, int]]:
    if len(items) != len(verdicts):
        raise ValueError(f"{len(items)} calibration items but {len(verdicts)} verdicts")
    return [(c, v.score) for c, v in zip(items, verdicts) if v.error is None and v.score is not None]


def calibration_table(
    items: list[CalibrationItem],
    verdicts: list[JudgeVerdict],
    *,
    constant_shares: Mapping[str, float] | None = None,
    min_gap: float = MIN_GAP,
) -> pd.DataFrame:
    """Per field: mean score of each kind, the gap, the constant's share and 'met'/'missed'/'skipped'.

    gap = paraphrase mean - the larger of the constant and other means (NaN: nothing to compare).
    """
    scored = _scored(items, verdicts)
    rows = []
    for field in dict.fromkeys(c.item.field for c in items):
        scores = {kind: [s for c, s in scored if c.item.field == field and c.kind == kind] for kind in KINDS}
        means = {kind: _mean(scores[kind]) for kind in KINDS}
        wrong = [means[k] for k in ("constant", "other") if not math.isnan(means[k])]
        gap = means["paraphrase"] - max(wrong) if wrong else math.nan
        rows.append(
            {
                "field": field,
                **{f"{kind}_mean": means[kind] for kind in KINDS},
                "gap": gap,
                "constant_share": (constant_shares or {}).get(field, math.nan),
                **{f"n_{kind}": len(scores[kind]) for kind in KINDS},
                "verdict": "skipped" if math.isnan(gap) else ("met" if gap >= min_gap else "missed"),
            }
        )
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


@dataclass(frozen=True, eq=False)
class CalibrationReport:
    """Means per kind, the per-field table and pass/fail; failed verdicts are counted, not averaged."""

    paraphrase_mean: float
    constant_mean: float
    other_mean: float
    n_paraphrase: int
    n_constant: int
    n_other: int
    failed: int
    sampled_clips: int
    missed_fields: tuple[str, ...]  # gap below min_gap: the judge cannot tell right from wrong there
    skipped_fields: tuple[str, ...]  # no wrong answer to compare (every clip agrees)
    by_field: pd.DataFrame
    passed: bool
    reason: str


def summarize_calibration(
    items: list[CalibrationItem],
    verdicts: list[JudgeVerdict],
    *,
    constant_shares: Mapping[str, float] | None = None,
    min_gap: float = MIN_GAP,
    min_paraphrase_mean: float = MIN_PARAPHRASE_MEAN,
) -> CalibrationReport:
    """Pass when every comparable field's gap >= min_gap and the paraphrase mean >= min_paraphrase_mean."""
    scored = _scored(items, verdicts)
    scores = {kind: [s for c, s in scored if c.kind == kind] for kind in KINDS}
    table = calibration_table(items, verdicts, constant_shares=constant_shares, min_gap=min_gap)
    missed = tuple(table.loc[table["verdict"] == "missed", "field"])
    skipped = tuple(table.loc[table["verdict"] == "skipped", "field"])
    paraphrase_mean = _mean(scores["paraphrase"])
    problems = _problems(len(items), scored, scores, paraphrase_mean, table, min_gap, min_paraphrase_mean)
    if problems:
        reason = "; ".join(problems)
    else:
        worst = table.loc[table["verdict"] == "met"].sort_values("gap").iloc[0]
        reason = (
            f"every field's gap >= {min_gap} (smallest: {worst.field} {worst.gap:.2f}); "
            f"paraphrase mean {paraphrase_mean:.2f} >= {min_paraphrase_mean}"
        )
    return CalibrationReport(
        paraphrase_mean=paraphrase_mean,
        constant_mean=_mean(scores["constant"]),
        other_mean=_mean(scores["other"]),
        n_paraphrase=len(scores["paraphrase"]),
        n_constant=len(scores["constant"]),
        n_other=len(scores["other"]),
        failed=len(items) - len(scored),
        sampled_clips=len({c.clip_id for c in items}),
        missed_fields=missed,
        skipped_fields=skipped,
        by_field=table,
        passed=not problems,
        reason=reason,
    )


def _problems(n_items, scored, scores, paraphrase_mean, table, min_gap, min_paraphrase_mean) -> list[str]:
    """Why the judge fails calibration, in words; empty when it passes."""
    if n_items == 0:
        return ["no calibration items: no labelled clips to sample"]
    if not scored:
        return [f"nothing could be scored: all {n_items} judge verdicts failed"]
    problems = []
    if not scores["paraphrase"]:
        problems.append("no scored paraphrase items")
    if not (table["verdict"] != "skipped").any():
        problems.append("no field has a scored wrong answer to compare: the labels all agree")
    if scores["paraphrase"] and paraphrase_mean < min_paraphrase_mean:
        problems.append(
            f"paraphrase mean {paraphrase_mean:.2f} < {min_paraphrase_mean}: the judge does not give a right "
            "answer in other words a high score"
        )
    missed = table.loc[table["verdict"] == "missed"]
    if len(missed):
        fields = ", ".join(f"{row.field} {row.gap:.2f}" for row in missed.itertuples())
        problems.append(f"gap < {min_gap} on {len(missed)} field(s) ({fields}): the judge cannot tell right from wrong")
    return problems


def table_records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The per-field table as JSON-able records, NaN as None, means rounded to 3 places."""
    records = []
    for row in table.to_dict(orient="records"):
        records.append(
            {
                k: (None if isinstance(v, float) and math.isnan(v) else round(v, 3) if isinstance(v, float) else v)
                for k, v in row.items()
            }
        )
    return records
