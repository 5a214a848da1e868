"""The OpenAI judge under a provider's rate limits, over real HTTP to a loopback server that enforces them.

The server keeps OpenAI-style token buckets (`rate_limit_rpm` / `rate_limit_tpm`) and answers 429
with Retry-After and x-ratelimit-* headers when one is empty. The tests count requests and 429s,
never time: a rate limit is a normal state, every item must end scored (or say why not), and few
requests may be wasted on 429s.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from typing import Any

import pandas as pd
import pytest

from avdag.core.captioning.prompts import PromptSet
from avdag.core.common.database import sqlite_url
from avdag.core.judging.items import JudgeItem
from avdag.core.judging.judges import JudgeVerdict, OpenAIChatJudge
from avdag.core.judging.rate_limits import AimdWindow, RatePacer, TokenBucket, WaitBoundReached, parse_duration_s
from avdag.core.judging.score_captions import (
    _Judged,
    judge_items,
    median_of_repeats,
    reply_outcome,
    score_captions,
    spend_of,
)
from avdag.core.judging.verdict_cache import JudgeCache, judge_cache_key
from avdag.resources.judge import OpenAIJudgeResource
from avdag.settings import Settings, SettingsError
from avdag_tests.support.judge_replies import CountedReplies, score_for
from avdag_tests.support.openai_stub_server import OpenAIStubServer, StubReply, openai_duration

SYSTEM_PROMPT = "You are a helpful assistant who has been tasked with evaluating the reponses."
USER_TEMPLATE = "Question: %s\nHuman: %s\nModel: %s"
QUESTIONS = {"road_type": "What road type?", "weather": "What is the weather?"}
WASTE_GOAL = 0.25  # at most this share of requests may be answered 429


def _answer_in(request: dict[str, Any]) -> str:
    """The model answer a request asks about: the item's identity in these tests."""
    return re.search(r"\nModel: (.*)$", request["messages"][1]["content"], re.DOTALL).group(1)


class Replies(CountedReplies):
    """reply_fn: `script(answer, nth)` answers the n-th ask of an item; asks are counted per item."""

    answer_in = staticmethod(_answer_in)


def _judge(server: OpenAIStubServer, **overrides: Any) -> OpenAIChatJudge:
    options: dict[str, Any] = dict(
        api_key="sk-test",
        base_url=server.base_url,
        system_prompt=SYSTEM_PROMPT,
        user_template=USER_TEMPLATE,
        timeout_s=5.0,
        max_retries=0,  # a 429 must not need a retry count
        max_in_flight=64,
    )
    return OpenAIChatJudge(**(options | overrides))


def _items(n: int, tag: str = "ok") -> list[JudgeItem]:
    return [JudgeItem("road_type", "What road type?", "Highway", f"{tag}-{i}") for i in range(n)]


def _assert_all_scored(verdicts: list[JudgeVerdict], items: list[JudgeItem]) -> None:
    assert [v.error for v in verdicts if v.error] == []
    assert [v.score for v in verdicts] == [score_for(item.model_answer) for item in items]


def _assert_few_wasted(server: OpenAIStubServer, verdicts: list[JudgeVerdict]) -> None:
    spend = spend_of([_Judged(v, cached=False) for v in verdicts])
    assert spend.calls == len(server.requests) and spend.rate_limited_calls == server.rate_limited_responses
    assert server.rate_limited_responses <= WASTE_GOAL * len(server.requests), (
        f"{server.rate_limited_responses} of {len(server.requests)} requests answered 429"
    )


# --------------------------------------------------------------------------- pacing under a quota


def test_a_request_quota_learned_from_headers_scores_every_item_with_few_429s() -> None:
    """1200 RPM enforced in 0.25 s slices (5 requests of burst), 200 items, 64 in flight, no limit configured."""
    items = _items(200)
    with OpenAIStubServer(Replies(), rate_limit_rpm=1200, rate_limit_burst_s=0.25) as server:
        verdicts = _judge(server).judge(items)
    _assert_all_scored(verdicts, items)
    _assert_few_wasted(server, verdicts)
    assert len(server.requests) - server.rate_limited_responses == len(items)  # each item answered once


def test_a_configured_request_rate_paces_a_server_that_only_says_retry_after() -> None:
    items = _items(100)
    server = OpenAIStubServer(Replies(), rate_limit_rpm=1200, rate_limit_burst_s=0.25, rate_limit_headers=False)
    with server:
        verdicts = _judge(server, requests_per_minute=1200).judge(items)
    _assert_all_scored(verdicts, items)
    _assert_few_wasted(server, verdicts)


def test_a_token_quota_learned_from_headers_is_paced_too() -> None:
    """Each call uses 11 tokens (10 prompt + 1 completion); 13,200 TPM allow 20 calls/s."""
    items = _items(100)
    with OpenAIStubServer(Replies(), rate_limit_tpm=13_200, rate_limit_burst_s=0.25) as server:
        verdicts = _judge(server).judge(items)
    _assert_all_scored(verdicts, items)
    _assert_few_wasted(server, verdicts)


def test_retry_after_is_waited_out_without_using_up_retries() -> None:
    """Every item's first call gets 429 `retry-after: 1`; the server refuses a retry that comes earlier."""
    refused_at: dict[str, float] = {}
    early: list[str] = []
    lock = threading.Lock()

    def reply_fn(request: dict[str, Any]) -> str | StubReply:
        answer, now = _answer_in(request), time.monotonic()
        with lock:
            if answer not in refused_at:
                refused_at[answer] = now
                return StubReply(status=429, content="Rate limit reached", headers={"retry-after": "1"})
            if now - refused_at[answer] < 1:
                early.append(answer)
                return StubReply(status=429, content="too early", headers={"retry-after": "1"})
        return f"<answer>{score_for(answer)}</answer>"

    items = _items(6)
    with OpenAIStubServer(reply_fn) as server:
        verdicts = _judge(server, max_retries=0).judge(items)
    _assert_all_scored(verdicts, items)
    assert early == [] and len(server.requests) == 12
    assert [(v.attempts, v.rate_limited) for v in verdicts] == [(2, 1)] * 6


def test_a_429_for_insufficient_quota_is_an_error_not_a_wait() -> None:
    """OpenAI's "no credit left" is a 429 too, but waiting never ends it."""
    body = json.dumps({"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}})
    with OpenAIStubServer(lambda request: StubReply(status=429, body=body)) as server:
        [verdict] = _judge(server, max_retries=4).judge(_items(1))
    assert verdict.error == "HTTP 429 after 1 attempt: You exceeded your current quota"
    assert (verdict.attempts, verdict.rate_limited, len(server.requests)) == (1, 0, 1)


def test_a_run_past_max_wait_s_ends_with_errors_that_say_so() -> None:
    """60 RPM, one request of burst, 10 items and max_wait_s=1: a few are scored, the rest say why not."""
    items = _items(10)
    with OpenAIStubServer(Replies(), rate_limit_rpm=60, rate_limit_burst_s=1.0) as server:
        verdicts = _judge(server, max_wait_s=1.0, max_in_flight=4).judge(items)
    scored = [v for v in verdicts if v.score is not None]
    cut = [v for v in verdicts if v.score is None]
    assert scored and cut and len(scored) + len(cut) == 10
    assert all(v.error and "max_wait_s of 1 s" in v.error for v in cut), [v.error for v in cut]
    assert sum(v.attempts for v in verdicts) == len(server.requests)


# --------------------------------------------------------------------------- replies without a score


def test_a_reply_without_score_is_asked_once_more_then_recorded_as_a_parse_failure() -> None:
    def script(answer: str, nth: int) -> str:
        if answer == "FORGETFUL" and nth == 1 or answer == "HOPELESS":
            return "The answers mostly agree."
        if answer == "OUT-OF-RANGE":
            return "<answer>9</answer>"
        return f"<answer>{score_for(answer)}</answer>"

    answers = ["FORGETFUL", "HOPELESS", "OUT-OF-RANGE", "ok"]
    replies = Replies(script)
    with OpenAIStubServer(replies) as server:
        judged = judge_items(_judge(server), [JudgeItem("road_type", "Q?", "Highway", a) for a in answers], None)
    assert [reply_outcome(j.verdict) for j in judged] == ["scored", "parse_failure", "out_of_range", "scored"]
    assert judged[0].verdict.score == score_for("FORGETFUL")
    assert replies.asked == {"FORGETFUL": 2, "HOPELESS": 2, "OUT-OF-RANGE": 1, "ok": 1}
    spend = spend_of(judged)
    assert (spend.calls, spend.parse_failures, spend.out_of_range) == (6, 1, 1) == (len(server.requests), 1, 1)


def test_the_second_ask_counts_against_the_budget() -> None:
    """Budget 2: both asks made. Budget 1: no second ask, and the reply stands as a parse failure."""
    for budget, calls in ((2, 2), (1, 1)):
        with OpenAIStubServer(lambda request: "no score here") as server:
            [verdict] = _judge(server, budget_calls=budget).judge(_items(1))
        assert (verdict.attempts, len(server.requests)) == (calls, calls)
        assert reply_outcome(verdict) == "parse_failure" and verdict.reply == "no score here"


# --------------------------------------------------------------------------- repeats


def _score_one_clip(judge: OpenAIChatJudge, answers: dict[str, str], cache: JudgeCache):
    prompts = PromptSet("sys", "user", SYSTEM_PROMPT, USER_TEMPLATE, dict(QUESTIONS))
    clips = pd.DataFrame(
        [{"clip_id": "c0", "batch": "b1", "sha256": "s", "source_url": "u", "label_json": json.dumps(answers)}]
    )
    captions = pd.DataFrame(
        [
            {
                "clip_id": "c0",
                "parsed_json": json.dumps(answers),
                "caption_source": "baseline",
                "model_path": "m",
                "model_hash": "mh",
                "prompt_hash": "ph",
                "generation": "{}",
                "caption_key": "k",
            }
        ]
    )
    return score_captions(judge, prompts, clips, captions, cache=cache, log=lambda _: None)


def test_repeats_give_the_median_and_spread_and_a_rerun_costs_nothing(tmp_path) -> None:
    cache = JudgeCache(sqlite_url(tmp_path / "judge.sqlite"))
    answers = {"road_type": "road-0", "weather": "weather-0"}
    scripted = {"road-0": [2, 5, 3], "weather-0": [4, 4, 4]}
    replies = Replies(lambda answer, nth: f"<answer>{scripted[answer][nth - 1]}</answer>")
    with OpenAIStubServer(replies) as server:
        frame, spend = _score_one_clip(_judge(server, repeats=3), answers, cache)
        again, rerun = _score_one_clip(_judge(server, repeats=3), answers, cache)
    rows = frame.set_index("field")
    assert rows.loc["road_type", "score"] == 3 and rows.loc["road_type", "score_spread"] == 3
    assert sorted(json.loads(rows.loc["road_type", "score_repeats"])) == [2, 3, 5]
    assert rows.loc["weather", "score"] == 4 and rows.loc["weather", "score_spread"] == 0
    assert (spend.items, spend.calls, spend.cache_hits) == (2, 6, 0) and len(server.requests) == 6
    assert (rerun.calls, rerun.cache_hits) == (0, 2) and again["cached"].all()
    assert again["score"].tolist() == frame["score"].tolist()
    assert again["score_spread"].tolist() == frame["score_spread"].tolist()
    assert list(frame.columns[-2:]) == ["score_repeats", "score_spread"]


def test_repeat_zero_keeps_the_cache_key_of_a_single_ask(tmp_path) -> None:
    """A cache filled before repeats answers repeat 0: going from 1 to 3 repeats asks only 2 more per item."""
    cache = JudgeCache(sqlite_url(tmp_path / "judge.sqlite"))
    items = _items(4)
    with OpenAIStubServer(Replies()) as server:
        scope = _judge(server).cache_scope
        assert judge_cache_key(scope, items[0]) == judge_cache_key(scope, items[0], repeat=0)
        assert judge_cache_key(scope, items[0], repeat=1) != judge_cache_key(scope, items[0])
        judge_items(_judge(server), items, cache)
        judged = judge_items(_judge(server, repeats=3), items, cache)
    assert len(server.requests) == 4 + 4 * 2
    assert [j.repeat_scores for j in judged] == [(score_for(i.model_answer),) * 3 for i in items]


def test_median_of_an_even_count_is_the_lower_one_and_a_failed_repeat_leaves_no_score() -> None:
    def judged(score: int | None, error: str | None = None) -> _Judged:
        return _Judged(JudgeVerdict(score=score, reply=f"<answer>{score}</answer>", error=error, attempts=1), False)

    median = median_of_repeats([judged(1), judged(5), judged(4), judged(2)])
    assert (median.verdict.score, median.verdict.reply, median.verdict.attempts) == (2, "<answer>2</answer>", 4)
    assert (median.repeat_scores, median.spread) == ((1, 5, 4, 2), 4)
    failed = median_of_repeats([judged(3), judged(None, "HTTP 500 after 1 attempt: boom"), judged(4)])
    assert failed.verdict.score is None and failed.spread is None
    assert failed.verdict.error == "repeat 2 of 3: HTTP 500 after 1 attempt: boom"


# --------------------------------------------------------------------------- the pieces, without a server


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.5", 0.5), ("soon", None), (None, None)],
)
def test_openai_reset_durations_are_read(text, seconds) -> None:
    assert parse_duration_s(text) == (pytest.approx(seconds) if seconds is not None else None)


def test_the_stub_writes_durations_as_openai_does() -> None:
    assert [openai_duration(s) for s in (0.02, 1.5, 360)] == ["20ms", "1.5s", "6m0s"]
    assert [parse_duration_s(openai_duration(s)) for s in (0.12, 8.64, 61)] == [0.12, 8.64, 61]


def test_aimd_halves_on_a_429_once_per_burst_and_grows_back_within_bounds() -> None:
    now = [0.0]
    window = AimdWindow(maximum=64, start=40, clock=lambda: now[0])

    def answered(times: int) -> None:
        for _ in range(times):
            window.release(window.acquire(deadline=math.inf), "answered")

    answered(1)
    assert window.limit == 41  # before any 429: one more per success
    sent = [window.acquire(deadline=math.inf) for _ in range(2)]  # sent together at t=0
    now[0] = 1.0
    window.release(sent[0], "rate_limited")
    window.release(sent[1], "rate_limited")  # the same burst: no second halving
    assert window.limit == 20
    answered(19)
    assert window.limit == 20
    answered(2)
    assert window.limit == 21  # after a 429: about one more per window (20) of successes
    for _ in range(10):  # each sent after the last halving
        now[0] += 1
        window.release(window.acquire(deadline=math.inf), "rate_limited")
    assert window.limit == 1
    answered(5000)
    assert window.limit == 64


def test_a_bucket_paces_to_the_lower_of_configured_and_announced_limits() -> None:
    now = [0.0]
    bucket = TokenBucket(per_minute=None, clock=lambda: now[0])
    assert bucket.reserve(1000) == 0  # no limit known: unpaced
    bucket.learn_limit(600)  # 10/s announced, paced at 95% of it
    bucket.drain_to(0)
    assert bucket.reserve(1) == pytest.approx(1 / 9.5) and bucket.reserve(1) == pytest.approx(2 / 9.5)
    lower = TokenBucket(per_minute=60, clock=lambda: now[0])
    lower.learn_limit(600)
    lower.drain_to(0)
    assert lower.reserve(1) == pytest.approx(1 / 0.95)


def test_a_call_refused_by_the_deadline_leaves_no_debt_for_the_next_run() -> None:
    now, slept = [0.0], []
    pacer = RatePacer(
        requests_per_minute=60, tokens_per_minute=None, max_in_flight=4, clock=lambda: now[0], sleep=slept.append
    )
    pacer.start(100, deadline=math.inf)  # the one request the bucket saved: no wait
    for _ in range(5):
        with pytest.raises(WaitBoundReached):
            pacer.start(100, deadline=0.5)  # the next request is ~1 s away
    pacer.start(100, deadline=math.inf)
    assert slept == [pytest.approx(1 / 0.95)]  # one request's wait, not six


# --------------------------------------------------------------------------- configuration


def test_rate_limit_settings_reach_the_judge(tmp_path) -> None:
    from avdag.definitions import build_resources  # all of the Dagster definitions: only this test needs them

    settings = Settings.from_env(
        {
            "AVDAG_HOME": str(tmp_path),
            "OPENAI_API_KEY": "sk-test",
            "AVDAG_JUDGE_REQUESTS_PER_MINUTE": "500",
            "AVDAG_JUDGE_TOKENS_PER_MINUTE": "30000",
            "AVDAG_JUDGE_REPEATS": "3",
        }
    )
    resource = build_resources(settings)["judge"]
    assert isinstance(resource, OpenAIJudgeResource)
    assert (resource.requests_per_minute, resource.tokens_per_minute, resource.repeats) == (500, 30_000, 3)
    prompts = PromptSet("s", "u", SYSTEM_PROMPT, USER_TEMPLATE, dict(QUESTIONS))
    judge = OpenAIJudgeResource(api_key="sk-test", requests_per_minute=500, repeats=3).build(prompts)
    assert judge.repeats == 3 and judge.pacer.requests.paced and not judge.pacer.tokens.paced
    unset = build_resources(Settings.from_env({"AVDAG_HOME": str(tmp_path), "OPENAI_API_KEY": "sk-test"}))["judge"]
    assert (unset.requests_per_minute, unset.tokens_per_minute, unset.repeats) == (None, None, 1)


@pytest.mark.parametrize(
    "name", ["AVDAG_JUDGE_REQUESTS_PER_MINUTE", "AVDAG_JUDGE_TOKENS_PER_MINUTE", "AVDAG_JUDGE_REPEATS"]
)
def test_a_bad_rate_limit_setting_names_the_variable(name) -> None:
    with pytest.raises(SettingsError, match=f"{name}='0': expected an integer > 0"):
        Settings.from_env({name: "0"})


def test_repeats_need_the_live_judge() -> None:
    resource = OpenAIJudgeResource(api_key="sk-test", use_batch_api=True, repeats=3)
    with pytest.raises(ValueError, match="repeats=3 needs the live judge"):
        resource.build_scorer(PromptSet("s", "u", SYSTEM_PROMPT, USER_TEMPLATE, {}), {"asset": "a"})
