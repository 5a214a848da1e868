"""The judge protocol and the recipe's judge, which score a model answer against a human label.

`OpenAIChatJudge` is the recipe's judge: any OpenAI-compatible chat endpoint (gpt-5 by
default). The offline judge (`offline_judge.py`) needs no key and no network. Both return
replies that end in "<answer>N</answer>" and both read the score with `parse_judge_score`,
so one parsing path decides every score.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import openai

from avdag.core.common.http_retry import failure_text, is_retryable, wait_before_retry
from avdag.core.judging.items import JudgeItem, format_judge_prompt, parse_judge_score
from avdag.core.judging.verdict_cache import judge_cache_scope


@dataclass(frozen=True)
class JudgeVerdict:
    """A judge's reply for one JudgeItem; `error` is set when no reply could be had.

    `attempts` and the token counts are what this verdict cost: HTTP calls made and the usage
    the server reported over them (0 for a judge that makes no calls).
    """

    score: int | None
    reply: str
    error: str | None = None
    attempts: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class Judge(Protocol):
    """Any judge (live, Batch API, offline), as scoring and the calibration check use it.

    `judge` returns one verdict per item, in order; a failed item carries `error`, it never
    raises for one item. `judge_id` names the judge in every score row. `cache_scope` keys the
    verdict cache (judge model and prompts); judges not worth caching are run without a cache.
    """

    judge_id: str

    def judge(self, items: list[JudgeItem]) -> list[JudgeVerdict]: ...


# --------------------------------------------------------------------------- OpenAI chat judge

# At ~200 ms a call, 64 in flight is ~300 calls/s; rate limits answer 429 with Retry-After, which is honoured.
DEFAULT_MAX_IN_FLIGHT = 64


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

    def spent_text(self) -> str:
        return f"judge budget of {self.limit} calls spent"


class OpenAIChatJudge:
    """Recipe's judge: any OpenAI-compatible chat endpoint (default model gpt-5), many calls in flight.

    Retries are ours (the client's max_retries=0): 429, 408/409, 5xx, timeouts and lost
    connections are tried again up to `max_retries` more times, waiting as the server's
    Retry-After asks, else with exponential backoff and jitter. `budget_calls` caps the HTTP
    calls (retries included) of one `judge()` call, i.e. of one scoring run; items left when it
    is spent get an error verdict without a call. A failed item never stops the others.
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
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if budget_calls is not None and budget_calls < 0:
            raise ValueError(f"budget_calls must be >= 0 or None, got {budget_calls}")
        self.model = model
        self.system_prompt = system_prompt
        self.user_template = user_template
        self.max_retries = max_retries
        self.max_in_flight = max_in_flight
        self.budget_calls = budget_calls
        # Built eagerly so a missing key or bad URL fails here, not as N errored verdicts.
        self._client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0)
        # The client's resolved URL, so a local server (or OPENAI_BASE_URL) is visible in the id.
        self.judge_id = f"openai:{model}@{str(self._client.base_url).rstrip('/')}"
        # No URL in the cache scope: the same model behind another address gives the same verdicts.
        self.cache_scope = judge_cache_scope(f"openai:{model}", system_prompt, user_template)

    def judge(self, items: list[JudgeItem]) -> list[JudgeVerdict]:
        """Verdicts in item order, up to `max_in_flight` calls at once under one call budget."""
        if not items:
            return []
        budget = CallBudget(self.budget_calls)
        workers = min(self.max_in_flight, len(items))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-judge") as pool:
            return list(pool.map(lambda item: self._judge_one(item, budget), items))

    def _judge_one(self, item: JudgeItem, budget: CallBudget) -> JudgeVerdict:
        attempt = 0
        last_error = ""
        while True:
            if not budget.take():
                spent = budget.spent_text() + (f" (after {last_error})" if last_error else "")
                return JudgeVerdict(score=None, reply="", error=spent, attempts=attempt)
            attempt += 1
            try:
                return self._verdict(self._complete(item), attempt)
            except (openai.APIStatusError, openai.APIConnectionError) as error:
                last_error = failure_text(error, attempt)
                if not is_retryable(error) or attempt > self.max_retries:
                    return JudgeVerdict(score=None, reply="", error=last_error, attempts=attempt)
                time.sleep(wait_before_retry(error, attempt))
            except Exception as error:  # noqa: BLE001 - e.g. an unreadable body; one bad item must not stop the run
                return JudgeVerdict(score=None, reply="", error=failure_text(error, attempt), attempts=attempt)

    @staticmethod
    def _verdict(response: Any, attempts: int) -> JudgeVerdict:
        usage = response.usage
        return verdict_from_reply(
            response.choices[0].message.content or "",
            attempts=attempts,
            prompt_tokens=usage.prompt_tokens if usage else 0,
            completion_tokens=usage.completion_tokens if usage else 0,
        )

    def _complete(self, item: JudgeItem) -> Any:
        return self._client.chat.completions.create(
            **judge_request_body(self.model, self.system_prompt, self.user_template, item)
        )


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
        return JudgeVerdict(score=None, reply="", error="empty reply from judge", **tokens)
    return JudgeVerdict(score=parse_judge_score(reply), reply=reply, **tokens)
