"""The OpenAI judge at scale, over real HTTP to a loopback stub: concurrency, retries, budget, cache, spend.

Replies are chosen per request from the model answer in the judge prompt ("ok-3", "BROKEN-1", ...),
so every test can tell exactly which item each request was for.
"""

from __future__ import annotations

import collections
import json
import re
import threading
from typing import Any

import pandas as pd
import pytest

from avdag.core.captioning.prompts import PromptSet
from avdag.core.common.database import sqlite_url
from avdag.core.judging.items import JudgeItem
from avdag.core.judging.judges import OpenAIChatJudge
from avdag.core.judging.score_captions import JudgeSpend, score_captions
from avdag.core.judging.verdict_cache import JudgeCache
from avdag_tests.support.judge_replies import CountedReplies, score_for
from avdag_tests.support.openai_stub_server import OpenAIStubServer, StubReply

SYSTEM_PROMPT = "You are a helpful assistant who has been tasked with evaluating the reponses."
USER_TEMPLATE = "Given the question ``%s'', human:\n%s\nLLM:\n%s\n<answer>[Single digit between 1 and 5]</answer>"
FAST_RETRY = {"retry-after-ms": "10"}
_MODEL_ANSWER = re.compile(r"\nLLM:\n(.*)\n<answer>\[Single", re.DOTALL)


def _answer_in(request: dict[str, Any]) -> str:
    """The model answer the request asks about (the item's identity in these tests)."""
    user = next(m["content"] for m in request["messages"] if m["role"] == "user")
    return _MODEL_ANSWER.search(user).group(1)


class ScriptedReplies(CountedReplies):
    """reply_fn: counts requests per item; an item's reply may depend on how often it was asked."""

    answer_in = staticmethod(_answer_in)


def _judge(server: OpenAIStubServer, **overrides: Any) -> OpenAIChatJudge:
    options: dict[str, Any] = dict(
        model="gpt-5",
        api_key="sk-test",
        base_url=server.base_url,
        system_prompt=SYSTEM_PROMPT,
        user_template=USER_TEMPLATE,
        timeout_s=5.0,
        max_retries=2,
        max_in_flight=8,
    )
    return OpenAIChatJudge(**(options | overrides))


def _items(answers: list[str]) -> list[JudgeItem]:
    return [JudgeItem("road_type", "What road type?", "Highway", answer) for answer in answers]


def _assert_scored_in_order(verdicts, answers: list[str]) -> None:
    assert len(verdicts) == len(answers)
    for verdict, answer in zip(verdicts, answers):
        assert verdict.error is None, (answer, verdict.error)
        assert verdict.score == score_for(answer), answer


# --------------------------------------------------------------------------- concurrency and retries


def test_calls_overlap_up_to_max_in_flight_and_keep_item_order() -> None:
    answers = [f"ok-{n}" for n in range(40)]
    replies = ScriptedReplies(
        lambda answer, nth: StubReply(content=f"<answer>{score_for(answer)}</answer>", delay_s=0.05)
    )
    with OpenAIStubServer(replies) as server:
        verdicts = _judge(server, max_in_flight=4).judge(_items(answers))
    _assert_scored_in_order(verdicts, answers)
    assert 1 < server.max_concurrent_requests <= 4
    assert replies.asked == collections.Counter(answers)  # each item asked exactly once
    assert all(v.attempts == 1 and v.prompt_tokens == 10 and v.completion_tokens == 1 for v in verdicts)


def test_429_honours_retry_after_and_every_item_ends_scored() -> None:
    def script(answer: str, nth: int) -> str | StubReply:
        if nth == 1:  # every item is rate-limited once; half say Retry-After: 0, half retry-after-ms
            headers = {"retry-after": "0"} if answer.endswith(("0", "2", "4", "6", "8")) else FAST_RETRY
            return StubReply(status=429, content="slow down", headers=headers)
        return f"<answer>{score_for(answer)}</answer>"

    answers = [f"ok-{n}" for n in range(30)]
    replies = ScriptedReplies(script)
    with OpenAIStubServer(replies) as server:
        verdicts = _judge(server).judge(_items(answers))
    _assert_scored_in_order(verdicts, answers)
    assert [v.attempts for v in verdicts] == [2] * 30
    assert len(server.requests) == 60 and set(replies.asked.values()) == {2}


def test_retry_waits_as_long_as_the_server_asks() -> None:
    """retry-after-ms 400 is waited out; Retry-After 0 retries at once (backoff alone waits >= 0.5 s)."""

    def script(answer: str, nth: int) -> str | StubReply:
        if nth == 1:
            headers = {"retry-after-ms": "400"} if answer == "patient" else {"retry-after": "0"}
            return StubReply(status=429, content="slow down", headers=headers)
        return f"<answer>{score_for(answer)}</answer>"

    def gap(server: OpenAIStubServer, answer: str) -> float:
        first, second = [t for r, t in zip(server.requests, server.request_times) if _answer_in(r) == answer]
        return second - first

    with OpenAIStubServer(ScriptedReplies(script)) as server:
        _assert_scored_in_order(_judge(server).judge(_items(["patient", "eager"])), ["patient", "eager"])
    assert gap(server, "patient") >= 0.4
    assert gap(server, "eager") < 0.4


def test_500_is_retried_and_a_permanent_500_fails_alone() -> None:
    def script(answer: str, nth: int) -> str | StubReply:
        if answer == "BROKEN" or (answer == "FLAKY" and nth == 1):
            return StubReply(status=500, content="boom", headers=FAST_RETRY)
        return f"<answer>{score_for(answer)}</answer>"

    answers = ["ok-1", "FLAKY", "BROKEN", "ok-2"]
    replies = ScriptedReplies(script)
    with OpenAIStubServer(replies) as server:
        verdicts = _judge(server, max_retries=2).judge(_items(answers))
    broken = verdicts[2]
    assert broken.score is None and broken.attempts == 3
    assert broken.error == "HTTP 500 after 3 attempts: boom"
    _assert_scored_in_order([verdicts[i] for i in (0, 1, 3)], ["ok-1", "FLAKY", "ok-2"])
    assert verdicts[1].attempts == 2
    assert replies.asked == {"ok-1": 1, "FLAKY": 2, "BROKEN": 3, "ok-2": 1}


def test_client_errors_are_not_retried() -> None:
    replies = ScriptedReplies(lambda answer, nth: StubReply(status=400, content="bad request"))
    with OpenAIStubServer(replies) as server:
        [verdict] = _judge(server, max_retries=3).judge(_items(["ok"]))
    assert verdict.error == "HTTP 400 after 1 attempt: bad request" and verdict.attempts == 1


def test_timeouts_are_retried_then_recorded() -> None:
    def script(answer: str, nth: int) -> StubReply:
        slow = answer == "ALWAYS-SLOW" or (answer == "SLOW-ONCE" and nth == 1)
        return StubReply(content=f"<answer>{score_for(answer)}</answer>", delay_s=1.0 if slow else 0.0)

    answers = ["SLOW-ONCE", "ALWAYS-SLOW", "ok"]
    replies = ScriptedReplies(script)
    with OpenAIStubServer(replies) as server:
        verdicts = _judge(server, timeout_s=0.2, max_retries=1).judge(_items(answers))
    _assert_scored_in_order([verdicts[0], verdicts[2]], ["SLOW-ONCE", "ok"])
    assert verdicts[1].score is None and verdicts[1].error.startswith("APITimeoutError after 2 attempts")
    assert replies.asked == {"SLOW-ONCE": 2, "ALWAYS-SLOW": 2, "ok": 1}


def test_unreachable_server_is_retried_then_an_error() -> None:
    with OpenAIStubServer() as server:
        pass  # its port is closed now
    [verdict] = _judge(server, max_retries=1).judge(_items(["ok"]))
    assert verdict.score is None and verdict.error.startswith("APIConnectionError after 2 attempts")


# --------------------------------------------------------------------------- budget


def test_budget_caps_http_calls_and_the_rest_get_an_error() -> None:
    answers = [f"ok-{n}" for n in range(12)]
    with OpenAIStubServer(ScriptedReplies()) as server:
        verdicts = _judge(server, budget_calls=5, max_in_flight=4).judge(_items(answers))
    assert len(server.requests) == 5
    scored = [v for v in verdicts if v.error is None]
    refused = [v for v in verdicts if v.error is not None]
    assert len(scored) == 5 and len(refused) == 7
    assert {v.error for v in refused} == {"judge budget of 5 calls spent"}
    assert all(v.attempts == 0 and v.score is None for v in refused)


def test_budget_counts_retries() -> None:
    replies = ScriptedReplies(lambda answer, nth: StubReply(status=429, content="later", headers=FAST_RETRY))
    with OpenAIStubServer(replies) as server:
        [verdict] = _judge(server, budget_calls=3, max_retries=10).judge(_items(["ok"]))
    assert len(server.requests) == 3 and verdict.attempts == 3
    assert verdict.error == "judge budget of 3 calls spent (after HTTP 429 after 3 attempts: later)"


# --------------------------------------------------------------------------- score_captions: cache and spend

QUESTIONS = {"road_type": "What road type?", "weather": "What is the weather?", "lighting": "How is the light?"}


def _prompts(judge_user: str = USER_TEMPLATE) -> PromptSet:
    return PromptSet("sys", "user", SYSTEM_PROMPT, judge_user, dict(QUESTIONS))


def _eval_clips(n: int) -> pd.DataFrame:
    label = {"road_type": "Highway", "weather": "Clear", "lighting": "Daylight"}
    return pd.DataFrame(
        [
            {
                "clip_id": f"c{i}",
                "batch": "b1",
                "sha256": f"sha{i}",
                "source_url": f"s3://x/c{i}.mp4",
                "label_json": json.dumps(label),
            }
            for i in range(n)
        ]
    )


def _captions(answers_by_clip: dict[str, dict[str, Any] | None], source: str = "baseline") -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "clip_id": clip_id,
                "parsed_json": json.dumps(answer) if answer is not None else None,
                "caption_source": source,
                "model_path": "m",
                "model_hash": "mh",
                "prompt_hash": "ph",
                "generation": "{}",
                "caption_key": f"k-{clip_id}",
            }
            for clip_id, answer in answers_by_clip.items()
        ]
    )


def _answers(n: int, tag: str = "") -> dict[str, dict[str, Any]]:
    return {
        f"c{i}": {"road_type": f"road-{i}{tag}", "weather": f"weather-{i}{tag}", "lighting": f"light-{i}{tag}"}
        for i in range(n)
    }


def _score(judge, captions, cache, n=4, prompts=None):
    return score_captions(judge, prompts or _prompts(), _eval_clips(n), captions, cache=cache, log=lambda _: None)


@pytest.fixture
def cache(tmp_path) -> JudgeCache:
    return JudgeCache(sqlite_url(tmp_path / "cache" / "judge.sqlite"))


def test_every_row_is_a_score_or_a_recorded_failure_and_spend_adds_up(cache) -> None:
    answers = _answers(4)
    answers["c1"]["weather"] = "BROKEN"
    answers["c2"]["road_type"] = "NO-SCORE"
    answers["c3"]["lighting"] = "OUT-OF-RANGE"
    del answers["c0"]["lighting"]  # not answered: a row without a call

    def script(answer: str, nth: int) -> str | StubReply:
        if answer == "BROKEN":
            return StubReply(status=503, content="overloaded", headers=FAST_RETRY)
        if answer == "NO-SCORE":
            return "I cannot tell."
        if answer == "OUT-OF-RANGE":
            return "Perfect. <answer>9</answer>"
        if nth == 1 and answer.startswith("road"):
            return StubReply(status=429, content="slow", headers=FAST_RETRY)
        return f"<answer>{score_for(answer)}</answer>"

    with OpenAIStubServer(ScriptedReplies(script)) as server:
        frame, spend = _score(_judge(server, max_retries=1), _captions(answers), cache)

    assert len(frame) == 12 and not frame.duplicated(["clip_id", "field"]).any()
    assert (frame["score"].notna() | frame["judge_error"].notna() | frame["judge_reply"].ne("")).all()
    by_answer = frame.set_index("model_answer")
    assert by_answer.loc['"BROKEN"', "judge_error"] == "HTTP 503 after 2 attempts: overloaded"
    assert pd.isna(by_answer.loc['"NO-SCORE"', "score"]) and pd.isna(by_answer.loc['"OUT-OF-RANGE"', "score"])
    assert frame.loc[frame["model_answer"].isna(), "judge_attempts"].tolist() == [0]
    road_rows = frame[(frame["field"] == "road_type") & (frame["model_answer"] != '"NO-SCORE"')]
    assert road_rows["judge_attempts"].tolist() == [2, 2, 2]
    assert spend == JudgeSpend(
        items=11,
        calls=len(server.requests),
        cache_hits=0,
        failures=1,
        parse_failures=1,
        out_of_range=1,
        prompt_tokens=int(frame["prompt_tokens"].sum()),
        completion_tokens=int(frame["completion_tokens"].sum()),
        rate_limited_calls=3,
    )
    assert spend.calls == 11 + 3 + 1 + 1  # one each, three rate-limited once, BROKEN twice, NO-SCORE twice
    assert spend.prompt_tokens == 10 * (spend.calls - 3 - 2)  # usage only from answered calls


def test_second_scoring_of_the_same_captions_makes_no_call(cache) -> None:
    captions = _captions(_answers(4))
    with OpenAIStubServer(ScriptedReplies()) as server:
        first, first_spend = _score(_judge(server), captions, cache)
        calls_first = len(server.requests)
        second, second_spend = _score(_judge(server), captions, cache)
    assert calls_first == 12 and len(server.requests) == 12
    assert second_spend.calls == 0 and second_spend.cache_hits == 12 and second["cached"].all()
    assert not first["cached"].any()
    assert second["score"].tolist() == first["score"].tolist()
    assert second["judge_reply"].tolist() == first["judge_reply"].tolist()
    assert (second["judge_attempts"] == 0).all() and second_spend.prompt_tokens == 0


def test_finetuned_unchanged_answers_reuse_baseline_verdicts(cache) -> None:
    baseline = _answers(4)
    finetuned = _answers(4)
    finetuned["c2"]["weather"] = "weather-2-better"
    replies = ScriptedReplies()
    with OpenAIStubServer(replies) as server:
        _score(_judge(server), _captions(baseline), cache)
        frame, spend = _score(_judge(server), _captions(finetuned, source="finetuned"), cache)
    assert spend.calls == 1 and spend.cache_hits == 11
    assert replies.asked["weather-2-better"] == 1 and len(server.requests) == 13
    changed = frame[frame["model_answer"] == '"weather-2-better"']
    assert changed["cached"].tolist() == [False] and changed["score"].tolist() == [score_for("weather-2-better")]


def test_identical_items_in_one_batch_are_asked_once(cache) -> None:
    same = {f"c{i}": {"road_type": "Highway", "weather": "Clear", "lighting": "Daylight"} for i in range(4)}
    with OpenAIStubServer(ScriptedReplies()) as server:
        frame, spend = _score(_judge(server), _captions(same), cache)
    assert len(server.requests) == 3 and spend.calls == 3 and spend.cache_hits == 9
    assert frame["score"].notna().all() and frame["cached"].sum() == 9


def test_changed_judge_prompt_or_model_makes_new_calls(cache) -> None:
    captions = _captions(_answers(2))
    with OpenAIStubServer(ScriptedReplies()) as server:
        _score(_judge(server), captions, cache, n=2)
        _, new_prompt = _score(
            _judge(server, user_template=USER_TEMPLATE + " "),
            captions,
            cache,
            n=2,
            prompts=_prompts(USER_TEMPLATE + " "),
        )
        _, new_model = _score(_judge(server, model="gpt-5-mini"), captions, cache, n=2)
        _, moved_server = _score(
            _judge(server, base_url=server.base_url.replace("127.0.0.1", "localhost")), captions, cache, n=2
        )
    assert (new_prompt.calls, new_model.calls) == (6, 6)
    assert moved_server.calls == 0  # the server's address is not part of the judge's identity
    assert len(cache) == 18


def test_failed_and_unparseable_verdicts_are_not_cached(cache) -> None:
    healthy = threading.Event()

    def script(answer: str, nth: int) -> str | StubReply:
        if not healthy.is_set() and answer == "road-0":
            return StubReply(status=500, content="boom")
        if not healthy.is_set() and answer == "weather-0":
            return "no digit here"
        return f"<answer>{score_for(answer)}</answer>"

    captions = _captions(_answers(2))
    with OpenAIStubServer(ScriptedReplies(script)) as server:
        _, first = _score(_judge(server, max_retries=0), captions, cache, n=2)
        healthy.set()
        frame, second = _score(_judge(server, max_retries=0), captions, cache, n=2)
    assert (first.failures, first.parse_failures, first.calls) == (1, 1, 7)  # the unparsed reply asked twice
    assert (second.calls, second.cache_hits, second.failures, second.parse_failures) == (2, 4, 0, 0)
    assert frame["score"].notna().all()


def test_cache_is_shared_by_threads_and_connections(db_url) -> None:
    writers = [JudgeCache(db_url) for _ in range(4)]

    def write(n: int) -> None:
        for i in range(50):
            writers[n].store("scope", [(f"{n}-{i}", 1 + i % 5, f"<answer>{1 + i % 5}</answer>")])

    threads = [threading.Thread(target=write, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    found = JudgeCache(db_url).lookup(f"{n}-{i}" for n in range(4) for i in range(50))
    assert len(found) == 200 and found["3-7"] == (3, "<answer>3</answer>")


def test_cache_refuses_a_verdict_without_score(cache) -> None:
    with pytest.raises(ValueError, match="only verdicts with a score"):
        cache.store("scope", [("k", None, "no digit")])
