"""The Batch API judge against a real loopback server that speaks the files and batches endpoints."""

import json

import pytest

from avdag.core.judging.batch_api import BatchApiPending, BatchApiTracker, OpenAIBatchJudge
from avdag.core.judging.batch_api_ledger import BatchApiLedger, runs_to_request
from avdag.core.judging.items import JudgeItem
from avdag.core.judging.judges import OpenAIChatJudge
from avdag.core.judging.score_captions import judge_items
from avdag.core.judging.verdict_cache import JudgeCache, judge_cache_key
from avdag_tests.support.openai_stub_server import OpenAIStubServer, StubReply

SYSTEM, TEMPLATE = "You are a strict judge.", "Q: {question}\nHuman: {human_answer}\nModel: {model_answer}"
ITEMS = [
    JudgeItem("weather", "What is the weather?", "Clear", answer) for answer in ("Clear", "Rainy", "Snowy", "Foggy")
]


def _reply(body):
    """Score by the model answer, so each verdict shows which request it answers."""
    prompt = body["messages"][1]["content"]
    return {
        "Model: Clear": "Same. <answer>5</answer>",
        "Model: Rainy": "Differs. <answer>1</answer>",
        "Model: Snowy": "Differs. <answer>2</answer>",
    }.get(prompt.splitlines()[-1], "no verdict here")


@pytest.fixture
def server():
    with OpenAIStubServer(_reply) as stub:
        stub.hold_batches = True
        yield stub


def _judge(server, tmp_path, **kwargs):
    return OpenAIBatchJudge(
        model="judge-test",
        api_key="test",
        base_url=server.base_url,
        system_prompt=SYSTEM,
        user_template=TEMPLATE,
        ledger=BatchApiLedger(tmp_path / "batches"),
        requested_by={"asset": "baseline_judge_scores", "partition": "b1"},
        max_retries=0,
        **kwargs,
    )


def _pending(judge, items) -> BatchApiPending:
    with pytest.raises(BatchApiPending) as raised:
        judge.judge(items)
    return raised.value


def test_submits_the_live_judges_exact_requests_as_one_batch(server, tmp_path):
    judge = _judge(server, tmp_path)
    pending = _pending(judge, ITEMS)
    assert pending.submitted_now and len(server.batches) == 1
    batch = next(iter(server.batches.values()))
    lines = [json.loads(line) for line in server.files[batch["input_file_id"]].decode().splitlines()]
    assert [line["custom_id"] for line in lines] == sorted(judge_cache_key(judge.cache_scope, i) for i in ITEMS)
    assert {(line["method"], line["url"]) for line in lines} == {("POST", "/v1/chat/completions")}
    assert batch["metadata"]["avdag_request_key"] == pending.submission.request_key

    live = OpenAIChatJudge(
        model="judge-test",
        api_key="test",
        base_url=server.base_url,
        system_prompt=SYSTEM,
        user_template=TEMPLATE,
        max_retries=0,
    )
    live.judge(ITEMS)
    # The live judge asks the reply without a score once more, with the same request: compare distinct bodies.
    assert sorted(map(json.dumps, (line["body"] for line in lines))) == sorted(set(map(json.dumps, server.requests)))
    assert live.cache_scope == judge.cache_scope, "a verdict bought either way must answer both"


def test_a_run_while_the_batch_runs_submits_nothing_and_the_ended_batch_gives_verdicts_in_order(server, tmp_path):
    judge = _judge(server, tmp_path)
    first = _pending(judge, ITEMS)
    again = _pending(judge, list(reversed(ITEMS)))
    assert not again.submitted_now and again.submission.request_key == first.submission.request_key
    assert len(server.batches) == 1 and len(server.files) == 1

    server.finish_batch(first.submission.parts[0].batch_id)
    verdicts = judge.judge(ITEMS)
    assert [v.score for v in verdicts] == [5, 1, 2, None]
    assert verdicts[3].reply == "no verdict here" and verdicts[3].error is None  # a parse failure, not an error
    assert all(v.attempts == 1 and v.prompt_tokens > 0 and v.completion_tokens > 0 for v in verdicts)
    assert judge.ledger.uncollected() == [] and len(server.batch_lines_processed) == 4


def test_failed_requests_and_an_expired_batch_become_recorded_failures(server, tmp_path):
    server.reply_fn = lambda body: StubReply(status=500) if "Snowy" in body["messages"][1]["content"] else _reply(body)
    judge = _judge(server, tmp_path)
    submission = _pending(judge, ITEMS[:3]).submission
    server.finish_batch(submission.parts[0].batch_id)
    by_answer = {item.model_answer: v for item, v in zip(ITEMS, judge.judge(ITEMS[:3]))}
    assert by_answer["Snowy"].score is None and "HTTP 500" in by_answer["Snowy"].error
    assert by_answer["Clear"].score == 5

    server.reply_fn = _reply
    expiring = _pending(judge, ITEMS[2:]).submission  # a new set of requests: a new submission
    assert expiring.request_key != submission.request_key
    server.finish_batch(expiring.parts[0].batch_id, status="expired", processed=1)
    verdicts = judge.judge(ITEMS[2:])
    errors = [v.error for v in verdicts if v.error]
    assert len(errors) == 1 and "batch_expired" in errors[0]
    assert sum(v.error is None for v in verdicts) == 1


def test_a_batch_created_but_never_recorded_is_adopted_not_bought_again(server, tmp_path):
    judge = _judge(server, tmp_path)
    submission = _pending(judge, ITEMS).submission
    (tmp_path / "batches" / f"{submission.request_key}.json").unlink()  # as if killed before the record was written
    adopted = _pending(judge, ITEMS)
    assert adopted.submitted_now and adopted.submission.parts[0].batch_id == submission.parts[0].batch_id
    assert len(server.batches) == 1 and len(server.files) == 1


def test_requests_past_the_batch_limit_go_in_several_batches(server, tmp_path):
    judge = _judge(server, tmp_path, max_requests_per_batch=3)
    items = [JudgeItem("weather", "Q?", "Clear", f"answer {n}") for n in range(7)]
    submission = _pending(judge, items).submission
    assert [part.requests for part in submission.parts] == [3, 3, 1] and len(server.batches) == 3
    for part in submission.parts[:2]:
        server.finish_batch(part.batch_id)
    assert not _pending(judge, items).submitted_now  # one part still running: still waiting
    server.finish_batch(submission.parts[2].batch_id, status="cancelled")
    verdicts = judge.judge(items)
    assert sum(v.error is None for v in verdicts) == 6
    assert "batch_cancelled" in next(v.error for v in verdicts if v.error)


def test_with_the_cache_a_second_scoring_of_the_same_answers_costs_nothing(server, tmp_path):
    judge, cache = _judge(server, tmp_path), JudgeCache(tmp_path / "judge.sqlite")
    items = ITEMS + ITEMS[:1]  # a duplicate is asked once
    with pytest.raises(BatchApiPending) as pending:
        judge_items(judge, items, cache)
    assert len(pending.value.submission.custom_ids) == 4
    server.finish_batch(pending.value.submission.parts[0].batch_id)
    first = judge_items(judge, items, cache)
    assert [j.verdict.score for j in first] == [5, 1, 2, None, 5] and first[-1].cached

    # The scored three come from the cache; the unparsed one is a new, smaller submission.
    with pytest.raises(BatchApiPending) as retry:
        judge_items(judge, items, cache)
    assert retry.value.submission.custom_ids == [judge_cache_key(judge.cache_scope, ITEMS[3])]
    server.finish_batch(retry.value.submission.parts[0].batch_id)
    again = judge_items(judge, items, cache)
    assert [j.cached for j in again] == [True, True, True, False, True]
    assert len(server.batch_lines_processed) == 5


def test_a_shared_batch_answers_another_assets_subset_and_stays_its_owners(server, tmp_path):
    """Fine-tuned answers equal to the baseline's are found in the baseline's submission by coverage."""
    judge = _judge(server, tmp_path)
    submission = _pending(judge, ITEMS).submission
    finetuned = OpenAIBatchJudge(
        model="judge-test",
        api_key="test",
        base_url=server.base_url,
        system_prompt=SYSTEM,
        user_template=TEMPLATE,
        ledger=judge.ledger,
        max_retries=0,
        requested_by={"asset": "finetuned_judge_scores", "partition": "b1"},
    )
    assert _pending(finetuned, ITEMS[1:3]).submission.request_key == submission.request_key
    server.finish_batch(submission.parts[0].batch_id)
    assert [v.score for v in finetuned.judge(ITEMS[1:3])] == [1, 2]
    assert [s.request_key for s in judge.ledger.uncollected()] == [submission.request_key], (
        "the owner's run still collects"
    )
    assert [v.score for v in judge.judge(ITEMS)] == [5, 1, 2, None]
    assert judge.ledger.uncollected() == [] and len(server.batches) == 1


def test_tracker_reports_ended_and_running_submissions_and_one_run_per_partition(server, tmp_path):
    server.hold_batches = False
    server.complete_after_polls = 2
    judge = _judge(server, tmp_path)
    _pending(judge, ITEMS[:2])
    tracker = BatchApiTracker(judge.client, judge.ledger)
    ended, running = tracker.poll()
    assert (len(ended), len(running)) == (0, 1) and running[0].parts[0].status == "in_progress"
    ended, running = tracker.poll()
    assert (len(ended), len(running)) == (1, 0) and ended[0].parts[0].status == "completed"
    runs = runs_to_request(ended)
    assert list(runs) == ["b1"] and runs["b1"][0] == ["baseline_judge_scores"]
    assert runs_to_request(tracker.poll()[0]) == runs, "the same ended batches must give the same run key"


def test_runs_racing_to_submit_the_same_requests_buy_one_batch(server, tmp_path):
    import threading

    judges = [_judge(server, tmp_path) for _ in range(4)]  # four runs, one ledger folder
    barrier, outcomes = threading.Barrier(len(judges)), []

    def run(judge):
        barrier.wait()
        outcomes.append(_pending(judge, ITEMS).submitted_now)

    threads = [threading.Thread(target=run, args=(judge,)) for judge in judges]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False, False, False, True]
    assert len(server.batches) == 1


def test_a_status_refresh_does_not_undo_a_collection(server, tmp_path):
    judge = _judge(server, tmp_path)
    submission = _pending(judge, ITEMS).submission
    stale_copy = judge.ledger.load(submission.request_key)  # what a sensor read before the run collected
    server.finish_batch(submission.parts[0].batch_id)
    judge.judge(ITEMS)  # collects: sets collected_at
    BatchApiTracker(judge.client, judge.ledger).refresh(stale_copy)  # the sensor writes its refresh afterwards
    assert judge.ledger.load(submission.request_key).collected_at is not None
    assert judge.ledger.uncollected() == []
