"""The judge protocol and the recipe's judge, which score a model answer against a human label.

`OpenAIChatJudge` is the recipe's judge: any OpenAI-compatible chat endpoint (gpt-5 by
default). The offline judge (`offline_judge.py`) needs no key and no network. Both return
replies that end in "<answer>N</answer>" and both read the score with `parse_judge_score`,
so one parsing path decides every score.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Protocol

import openai

from avdag.core.common.http_retry import (
    failure_text,
    is_rate_limit,
    is_retryable,
    rate_limit_wait_s,
    wait_before_retry,
)
from avdag.core.judging.items import JudgeItem, format_judge_prompt, is_out_of_range, parse_judge_score
from avdag.core.judging.rate_limits import RatePacer, WaitBoundReached
from avdag.core.judging.verdict_cache import judge_cache_scope

EMPTY_REPLY = "empty reply from judge"


@dataclass(frozen=True)
class JudgeVerdict:
    """A judge's reply for one JudgeItem; `error` is set when no reply could be had.

    `attempts` and the token counts are what this verdict cost: HTTP calls made and the usage
    the server reported over them (0 for a judge that makes no calls). `rate_limited` counts the
    calls among `attempts` that the server refused with a 429: paid for in time and budget, wasted.
    """

    score: int | None
    reply: str
    error: str | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    rate_limited: int = 0


class Judge(Protocol):
    """Any judge (live, Batch API, offline), as scoring and the calibration check use it.

    `judge` returns one verdict per item, in order; a failed item carries `error`, it never
    raises for one item. `judge_id` names the judge in every score row. `cache_scope` keys the
    verdict cache (judge model and prompts); judges not worth caching are run without a cache.
    A judge may also have `repeats`: how many times scoring asks each item (default 1).
    """

    judge_id: str

    def judge(self, items: list[JudgeItem]) -> list[JudgeVerdict]: ...


# --------------------------------------------------------------------------- OpenAI chat judge

# At ~200 ms a call, 64 in flight is ~300 calls/s; under a rate limit the pacer holds it to the limit.
DEFAULT_MAX_IN_FLIGHT = 64
# A run gives up waiting on rate limits this long after it started: 15,000 calls at 500 a minute take 30 min.
DEFAULT_MAX_WAIT_S = 3600.0


class CallBudget:
    """At most `limit` HTTP calls across all worker threads (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self._used = 0
        self._lock = threading.Lock()

    def take(self) -> bool:
        """Claim one call; False once the budget is spent."""
        with self._lock:
            if self.limit is not None and self._used >= self.limit:
                return False
            self._used += 1
            return True

    def give_back(self) -> None:
        """Return a claimed call that was never made."""
        with self._lock:
            self._used -= 1

    def spent_text(self) -> str:
        return f"judge budget of {self.limit} calls spent"


@dataclass
class _Cost:
    """What one item has cost so far, over all its calls."""

    attempts: int = 0
    rate_limited: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def failed(self, error: str) -> JudgeVerdict:
        return JudgeVerdict(score=None, reply="", error=error, **vars(self))


class OpenAIChatJudge:
    """Recipe's judge: any OpenAI-compatible chat endpoint (default model gpt-5), many calls in flight.

    Retries are ours (the client's max_retries=0). A rate limit (429) is a normal state under a
    big run, not a failure: calls are paced to `requests_per_minute` / `tokens_per_minute` (when
    None, to what the x-ratelimit-* headers announce), the calls in flight shrink on a 429 and
    grow back on success (`rate_limits.RatePacer`), and a 429 is waited out as its Retry-After
    asks without using up `max_retries`, which is for real errors (408/409, 5xx, timeouts, lost
    connections; waiting as the server asks, else backoff). What bounds rate-limit waits is time:
    no wait may end later than `max_wait_s` after `judge()` began (None: no bound), and an item cut
    off says so in its error. `budget_calls` caps the HTTP calls (429s and retries included) of
    one `judge()` call, i.e. of one scoring run; items left when it is spent get an error verdict
    without a call. A reply with no score is asked once more. A failed item never stops the others.
    """

    def __init__(
        self,
        *,
        model: str = "gpt-5",
        api_key: str,
        base_url: str | None = None,
        system_prompt: str,
        user_template: str,
        timeout_s: float = 60.0,
        max_retries: int = 4,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        budget_calls: int | None = None,
        requests_per_minute: float | None = None,
        tokens_per_minute: float | None = None,
        max_wait_s: float | None = DEFAULT_MAX_WAIT_S,
        repeats: int = 1,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if budget_calls is not None and budget_calls < 0:
            raise ValueError(f"budget_calls must be >= 0 or None, got {budget_calls}")
        for name, rate in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if rate is not None and rate <= 0:
                raise ValueError(f"{name} must be > 0 or None, got {rate}")
        if max_wait_s is not None and max_wait_s < 0:
            raise ValueError(f"max_wait_s must be >= 0 or None, got {max_wait_s}")
        if repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {repeats}")
        self.model = model
        self.system_prompt = system_prompt
        self.user_template = user_template
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.budget_calls = budget_calls
        self.max_wait_s = max_wait_s
        self.repeats = repeats
        # One pacer for the judge's lifetime: what a run learns about the limits helps the next.
        self.pacer = RatePacer(
            requests_per_minute=requests_per_minute, tokens_per_minute=tokens_per_minute, max_in_flight=max_in_flight
        )
        # Built eagerly so a missing key or bad URL fails here, not as N errored verdicts.
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)
        # The client's resolved URL, so a local server (or OPENAI_BASE_URL) is visible in the id.
        self.judge_id = f"openai:{model}@{str(self._client.base_url).rstrip('/')}"
        # No URL in the cache scope: the same model behind another address gives the same verdicts.
        self.cache_scope = judge_cache_scope(f"openai:{model}", system_prompt, user_template)

    def judge(self, items: list[JudgeItem]) -> list[JudgeVerdict]:
        """Verdicts in item order, up to `max_in_flight` calls at once under one call budget and deadline."""
        if not items:
            return []
        budget = CallBudget(self.budget_calls)
        deadline = time.monotonic() + self.max_wait_s if self.max_wait_s is not None else math.inf
        workers = min(self.max_in_flight, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-judge") as pool:
            return list(pool.map(lambda item: self._judge_one(item, budget, deadline), items))

    def _judge_one(self, item: JudgeItem, budget: CallBudget, deadline: float) -> JudgeVerdict:
        """Ask until there is a reply (a reply with no score: once more); errors as the class says."""
        cost = _Cost()
        failures = 0  # errors other than rate limits, held to max_retries
        unscored: JudgeVerdict | None = None  # a reply with no score, asked again once
        last_error = ""

        def give_up(error: str) -> JudgeVerdict:
            return replace(unscored, **vars(cost)) if unscored else cost.failed(error)

        while True:
            if not budget.take():
                return give_up(budget.spent_text() + (f" (after {last_error})" if last_error else ""))
            try:
                verdict = self._call(item, cost, deadline)
            except WaitBoundReached as bound:  # raised before the call went out
                budget.give_back()
                return give_up(self._bound_text(bound, last_error))
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                last_error = failure_text(error, cost.attempts)
                if is_rate_limit(error):
                    cost.rate_limited += 1
                    wait = rate_limit_wait_s(error, cost.rate_limited)
                elif is_retryable(error) and failures < self.max_retries:
                    failures += 1
                    wait = wait_before_retry(error, failures)
                else:
                    return give_up(last_error)
                try:
                    self.pacer.wait(wait, deadline)
                except WaitBoundReached as bound:
                    return give_up(self._bound_text(bound, last_error))
                continue
            except Exception as error:  # noqa: BLE001 - e.g. an unreadable body; one bad item must not stop the run
                return give_up(failure_text(error, cost.attempts))
            if unscored is not None or not is_unscored_reply(verdict):
                return verdict
            unscored = verdict  # no score in it: LLM judges sometimes forget the <answer> tag

    def _call(self, item: JudgeItem, cost: _Cost, deadline: float) -> JudgeVerdict:
        """One paced HTTP call; `cost` counts it. Raises the client's errors and WaitBoundReached."""
        body = judge_request_body(self.model, self.system_prompt, self.user_template, item)
        call = self.pacer.start(sum(len(m["content"]) for m in body["messages"]), deadline)
        cost.attempts += 1
        try:
            raw = self._client.chat.completions.with_raw_response.create(**body)
            response = raw.parse()
        except openai.APIStatusError as error:
            outcome = "rate_limited" if is_rate_limit(error) else "failed"
            self.pacer.finish(call, outcome, error.response.headers)
            raise
        except BaseException:
            self.pacer.finish(call, "failed", None)
            raise
        usage = response.usage
        prompt_tokens, completion_tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
        self.pacer.finish(call, "answered", raw.headers, prompt_tokens + completion_tokens if usage else None)
        cost.prompt_tokens += prompt_tokens
        cost.completion_tokens += completion_tokens
        return replace(verdict_from_reply(response.choices[0].message.content or "", attempts=0), **vars(cost))

    def _bound_text(self, bound: WaitBoundReached, last_error: str) -> str:
        return f"gave up at the run's max_wait_s of {self.max_wait_s:g} s: {bound}" + (
            f" (after {last_error})" if last_error else ""
        )


def is_unscored_reply(verdict: JudgeVerdict) -> bool:
    """A reply came back, but with no score to read: no <answer> tag and no 1-5 digit, or an empty reply.

    An integer outside 1-5 in the tag is a reply that was read (out of range), not asked again.
    """
    if verdict.score is not None:
        return False
    if verdict.error is not None:
        return verdict.error == EMPTY_REPLY
    return not is_out_of_range(verdict.reply)


def judge_request_body(model: str, system_prompt: str, user_template: str, item: JudgeItem) -> dict[str, Any]:
    """The chat request for one item, the same whether sent now or in a Batch API file.

    No temperature: gpt-5 only accepts the default.
    """
    return {
        "model": model,
        "messages": [
            {"role": "system", "content": system_prompt},
            {
                "role": "user",
                "content": format_judge_prompt(user_template, item.question, item.human_answer, item.model_answer),
            },
        ],
    }


def verdict_from_reply(
    reply: str, *, attempts: int, prompt_tokens: int = 0, completion_tokens: int = 0
) -> JudgeVerdict:
    """The verdict a chat reply gives: its parsed score, or an error when the reply is empty."""
    tokens = dict(attempts=attempts, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)
    if not reply:
        return JudgeVerdict(score=None, reply="", error=EMPTY_REPLY, **tokens)
    return JudgeVerdict(score=parse_judge_score(reply), reply=reply, **tokens)
