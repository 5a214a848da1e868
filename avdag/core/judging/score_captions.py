"""Judge the captions of the eval clips: one row per (clip, question), with its lineage and its cost.

Every row names the clip (id, content hash, source URL, batch), the caption (source, model
hash, prompt hash, generation settings, cache key) and the judge (id, prompt hash, raw reply),
so any score can be traced back to what produced it.

With a `JudgeCache`, every item is looked up first and only the misses go to the judge, all in
one `judge()` call, so the judge's concurrency spans the whole batch rather than one clip. Items
identical to another in the batch (same question and answers) are asked once. The offline judge
is run without a cache: it is deterministic, free and has no cache scope.

A judge with `repeats` N > 1 asks each item N times: an LLM judge's score varies from ask to ask,
so the row holds the median, every repeat's score and their spread (max - min). Each repeat is
its own cache entry, so a re-run costs nothing either.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import pandas as pd

from avdag.core.judging.items import JudgeItem, is_out_of_range, plan_judge_items
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
    "score_repeats",
    "score_spread",
)
# The tag parse_judge_score reads first; an integer in it outside 1-5 is "out of range".


@dataclass(frozen=True)
class JudgeSpend:
    """What one scoring run cost and how its verdicts came out, for materialization metadata.

    calls: HTTP calls made (retries and 429s included); cache_hits: items answered without a call
    of their own; failures: items left with an error; parse_failures: replies with no 1-5 score
    (after asking once more); out_of_range: replies whose <answer> held an integer outside 1-5;
    rate_limited_calls: calls the server refused with a 429, i.e. wasted.
    """

    items: int
    calls: int
    cache_hits: int
    failures: int
    parse_failures: int
    out_of_range: int
    prompt_tokens: int
    completion_tokens: int
    rate_limited_calls: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def reply_outcome(verdict: JudgeVerdict) -> str:
    """ "scored", "error", "out_of_range" (<answer>7</answer>) or "parse_failure" (no 1-5 score)."""
    if verdict.error is not None:
        return "error"
    if verdict.score is not None:
        return "scored"
    return "out_of_range" if is_out_of_range(verdict.reply) else "parse_failure"


@dataclass(frozen=True)
class _Judged:
    """An item's verdict; with repeats, the median one, costs summed, and every repeat's score."""

    verdict: JudgeVerdict
    cached: bool
    repeat_scores: tuple[int | None, ...] = ()

    @property
    def spread(self) -> int | None:
        """max - min of the repeat scores; None unless there are several and all scored."""
        scores = self.repeat_scores
        if len(scores) < 2 or None in scores:
            return None
        return max(scores) - min(scores)


def judge_items(
    judge: Judge, items: list[JudgeItem], cache: JudgeCache | None, repeats: int | None = None
) -> list[_Judged]:
    """Verdicts for `items` in order: cached ones from the store, the rest from one judge() call.

    `repeats` (default: the judge's own `repeats`, else 1) asks each item that many times, each
    repeat under its own cache key; `median_of_repeats` makes the item's verdict.
    """
    repeats = getattr(judge, "repeats", 1) if repeats is None else repeats
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    asked = _ask(judge, [(item, repeat) for item in items for repeat in range(repeats)], cache)
    return [median_of_repeats(asked[start : start + repeats]) for start in range(0, len(asked), repeats)]


def _ask(judge: Judge, asks: list[tuple[JudgeItem, int]], cache: JudgeCache | None) -> list[_Judged]:
    """One verdict per (item, repeat): from the cache, else from one judge() call over every miss."""
    if cache is None:
        return [_Judged(verdict, cached=False) for verdict in judge.judge([item for item, _ in asks])]
    keys = [judge_cache_key(judge.cache_scope, item, repeat) for item, repeat in asks]
    stored = cache.lookup(keys)
    misses = {key: item for key, (item, _) in zip(keys, asks) if key not in stored}
    fresh = dict(zip(misses, judge.judge(list(misses.values()))))
    cache.store(judge.cache_scope, [(key, v.score, v.reply) for key, v in fresh.items() if _cacheable(v)])
    judged: list[_Judged] = []
    charged: set[str] = set()
    for key in keys:
        if key in stored:
            judged.append(_Judged(JudgeVerdict(score=stored[key][0], reply=stored[key][1]), cached=True))
        elif key in charged:  # the same item again in this batch: its verdict, no second cost
            free = replace(fresh[key], attempts=0, prompt_tokens=0, completion_tokens=0, rate_limited=0)
            judged.append(_Judged(free, cached=True))
        else:
            charged.add(key)
            judged.append(_Judged(fresh[key], cached=False))
    return judged


def median_of_repeats(repeats: list[_Judged]) -> _Judged:
    """One item's verdict from its repeats: the lower median score, with the costs of all repeats.

    The lower median of an even count (the 2nd of 4 sorted scores) is one of the scores given, so
    a score stays an integer the judge actually replied, and its reply goes with it. Only an item
    whose every repeat scored gets a score, so all scores mean the same; otherwise the first
    repeat without one gives the verdict (its error names the repeat), and the next run asks only
    that repeat again (the others are cached).
    """
    scores = tuple(judged.verdict.score for judged in repeats)
    cached = all(judged.cached for judged in repeats)
    if len(repeats) == 1:
        return replace(repeats[0], repeat_scores=scores)
    verdicts = [judged.verdict for judged in repeats]
    cost = {
        name: sum(getattr(v, name) for v in verdicts)
        for name in ("attempts", "prompt_tokens", "completion_tokens", "rate_limited")
    }
    unscored = [(n, v) for n, v in enumerate(verdicts) if v.score is None]
    if unscored:
        n, verdict = unscored[0]
        error = f"repeat {n + 1} of {len(verdicts)}: {verdict.error}" if verdict.error is not None else None
        return _Judged(replace(verdict, error=error, **cost), cached, scores)
    median = sorted(verdicts, key=lambda v: v.score)[(len(verdicts) - 1) // 2]
    return _Judged(replace(median, **cost), cached, scores)


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
        rate_limited_calls=sum(j.verdict.rate_limited for j in judged),
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
    repeats: int | None = None,
) -> tuple[pd.DataFrame, JudgeSpend]:
    """Score every eval clip's caption against its human label, question by question; (rows, spend).

    `repeats`: asks per item (default: the judge's own `repeats`, else 1), see `judge_items`.
    """
    by_clip = captions.set_index("clip_id")
    plans = []
    for clip in eval_clips.itertuples(index=False):
        if clip.clip_id not in by_clip.index:
            raise KeyError(f"no caption for eval clip {clip.clip_id}")
        plans.append(_clip_plan(clip, by_clip.loc[clip.clip_id], prompts, judge))
    started = time.perf_counter()
    judged = iter(judge_items(judge, [item for plan in plans for item in plan.items], cache, repeats))
    rows, judged_in_order = [], []
    for plan in plans:
        by_field = {item.field: next(judged) for item in plan.items}
        judged_in_order.extend(by_field.values())
        for field, question in prompts.questions.items():
            rows.append({**plan.lineage, **_row(field, question, plan, by_field.get(field))})
    spend = spend_of(judged_in_order)
    log(
        f"judged {spend.items} items of {len(plans)} clips in {time.perf_counter() - started:.1f}s: "
        f"{spend.calls} calls ({spend.rate_limited_calls} rate-limited), {spend.cache_hits} cache hits, "
        f"{spend.failures} failures"
    )
    frame = pd.DataFrame(rows, columns=SCORE_COLUMNS)
    frame["score"] = frame["score"].astype("Int64")
    frame["score_spread"] = frame["score_spread"].astype("Int64")
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
        "score_repeats": json.dumps(list(judged.repeat_scores)) if judged else None,
        "score_spread": judged.spread if judged else None,
    }
