"""Judge the captions of the eval clips: one row per (clip, question), with its lineage and its cost.

Every row names the clip (id, content hash, source URL, batch), the caption (source, model
hash, prompt hash, generation settings, cache key) and the judge (id, prompt hash, raw reply),
so any score can be traced back to what produced it.

With a `JudgeCache`, every item is looked up first and only the misses go to the judge, all in
one `judge()` call, so the judge's concurrency spans the whole batch rather than one clip. Items
identical to another in the batch (same question and answers) are asked once. The offline judge
is run without a cache: it is deterministic, free and has no cache scope.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import pandas as pd

from avdag.core.judging.items import JudgeItem, plan_judge_items, tagged_answer
from avdag.core.judging.judges import Judge, JudgeVerdict
from avdag.core.judging.verdict_cache import JudgeCache, judge_cache_key

SCORE_COLUMNS = (
    "clip_id",
    "batch",
    "clip_sha256",
    "source_url",
    "caption_source",
    "model_path",
    "model_hash",
    "caption_prompt_hash",
    "generation",
    "caption_key",
    "field",
    "question",
    "human_answer",
    "model_answer",
    "score",
    "judge_reply",
    "judge_error",
    "judge_id",
    "judge_prompt_hash",
    "cached",
    "judge_attempts",
    "prompt_tokens",
    "completion_tokens",
)
# The tag parse_judge_score reads first; an integer in it outside 1-5 is "out of range".


@dataclass(frozen=True)
class JudgeSpend:
    """What one scoring run cost and how its verdicts came out, for materialization metadata.

    calls: HTTP calls made (retries included); cache_hits: items answered without a call of their
    own; failures: items left with an error; parse_failures: replies with no 1-5 score;
    out_of_range: replies whose <answer> held an integer outside 1-5.
    """

    items: int
    calls: int
    cache_hits: int
    failures: int
    parse_failures: int
    out_of_range: int
    prompt_tokens: int
    completion_tokens: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def reply_outcome(verdict: JudgeVerdict) -> str:
    """ "scored", "error", "out_of_range" (<answer>7</answer>) or "parse_failure" (no 1-5 score)."""
    if verdict.error is not None:
        return "error"
    if verdict.score is not None:
        return "scored"
    tagged = tagged_answer(verdict.reply)
    if tagged is not None and re.fullmatch(r"-?\d+", tagged):
        return "out_of_range"
    return "parse_failure"


@dataclass(frozen=True)
class _Judged:
    verdict: JudgeVerdict
    cached: bool


def judge_items(judge: Judge, items: list[JudgeItem], cache: JudgeCache | None) -> list[_Judged]:
    """Verdicts for `items` in order: cached ones from the store, the rest from one judge() call."""
    if cache is None:
        return [_Judged(verdict, cached=False) for verdict in judge.judge(items)]
    keys = [judge_cache_key(judge.cache_scope, item) for item in items]
    stored = cache.lookup(keys)
    misses = {key: item for key, item in zip(keys, items) if key not in stored}
    fresh = dict(zip(misses, judge.judge(list(misses.values()))))
    cache.store(judge.cache_scope, [(key, v.score, v.reply) for key, v in fresh.items() if _cacheable(v)])
    judged: list[_Judged] = []
    charged: set[str] = set()
    for key in keys:
        if key in stored:
            judged.append(_Judged(JudgeVerdict(score=stored[key][0], reply=stored[key][1]), cached=True))
        elif key in charged:  # the same item again in this batch: its verdict, no second cost
            judged.append(_Judged(replace(fresh[key], attempts=0, prompt_tokens=0, completion_tokens=0), cached=True))
        else:
            charged.add(key)
            judged.append(_Judged(fresh[key], cached=False))
    return judged


def _cacheable(verdict: JudgeVerdict) -> bool:
    return verdict.error is None and verdict.score is not None


def spend_of(judged: list[_Judged]) -> JudgeSpend:
    """Totals over the judged items (skipped fields cost nothing and are not items)."""
    outcomes = [reply_outcome(j.verdict) for j in judged]
    return JudgeSpend(
        items=len(judged),
        calls=sum(j.verdict.attempts for j in judged),
        cache_hits=sum(j.cached for j in judged),
        failures=outcomes.count("error"),
        parse_failures=outcomes.count("parse_failure"),
        out_of_range=outcomes.count("out_of_range"),
        prompt_tokens=sum(j.verdict.prompt_tokens for j in judged),
        completion_tokens=sum(j.verdict.completion_tokens for j in judged),
    )


@dataclass(frozen=True)
class _ClipPlan:
    """What scoring one clip needs: its lineage columns, label, parsed answer, items and skipped fields."""

    lineage: dict[str, Any]
    label: dict[str, Any]
    answer: dict[str, Any] | None
    items: list[JudgeItem]
    skipped: dict[str, str]  # field -> why it is not judged


def _clip_plan(clip, caption, prompts, judge: Judge) -> _ClipPlan:
    label = json.loads(clip.label_json)
    answer = json.loads(caption.parsed_json) if isinstance(caption.parsed_json, str) else None
    items, skipped = plan_judge_items(label, answer, prompts.questions)
    lineage = {
        "clip_id": clip.clip_id,
        "batch": clip.batch,
        "clip_sha256": clip.sha256,
        "source_url": clip.source_url,
        "caption_source": caption.caption_source,
        "model_path": caption.model_path,
        "model_hash": caption.model_hash,
        "caption_prompt_hash": caption.prompt_hash,
        "generation": caption.generation,
        "caption_key": caption.caption_key,
        "judge_id": judge.judge_id,
        "judge_prompt_hash": prompts.judge_hash,
    }
    return _ClipPlan(lineage, label, answer, items, skipped)


def score_captions(
    judge: Judge,
    prompts,
    eval_clips: pd.DataFrame,
    captions: pd.DataFrame,
    *,
    cache: JudgeCache | None = None,
    log: Callable[[str], None] = print,
) -> tuple[pd.DataFrame, JudgeSpend]:
    """Score every eval clip's caption against its human label, question by question; (rows, spend)."""
    by_clip = captions.set_index("clip_id")
    plans = []
    for clip in eval_clips.itertuples(index=False):
        if clip.clip_id not in by_clip.index:
            raise KeyError(f"no caption for eval clip {clip.clip_id}")
        plans.append(_clip_plan(clip, by_clip.loc[clip.clip_id], prompts, judge))
    started = time.perf_counter()
    judged = iter(judge_items(judge, [item for plan in plans for item in plan.items], cache))
    rows, judged_in_order = [], []
    for plan in plans:
        by_field = {item.field: next(judged) for item in plan.items}
        judged_in_order.extend(by_field.values())
        for field, question in prompts.questions.items():
            rows.append({**plan.lineage, **_row(field, question, plan, by_field.get(field))})
    spend = spend_of(judged_in_order)
    log(
        f"judged {spend.items} items of {len(plans)} clips in {time.perf_counter() - started:.1f}s: "
        f"{spend.calls} calls, {spend.cache_hits} cache hits, {spend.failures} failures"
    )
    frame = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    frame["score"] = frame["score"].astype("Int64")
    return frame, spend


def _row(field: str, question: str, plan: _ClipPlan, judged: _Judged | None) -> dict[str, Any]:
    verdict = judged.verdict if judged else None
    label, answer = plan.label, plan.answer
    return {
        "field": field,
        "question": question,
        "human_answer": json.dumps(label.get(field), ensure_ascii=False),
        "model_answer": json.dumps(answer.get(field), ensure_ascii=False) if answer and field in answer else None,
        "score": verdict.score if verdict else None,
        "judge_reply": verdict.reply if verdict else plan.skipped[field],
        "judge_error": verdict.error if verdict else None,
        "cached": judged.cached if judged else False,
        "judge_attempts": verdict.attempts if verdict else 0,
        "prompt_tokens": verdict.prompt_tokens if verdict else 0,
        "completion_tokens": verdict.completion_tokens if verdict else 0,
    }
