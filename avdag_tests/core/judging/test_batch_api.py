"""The Batch API judge against a real loopback server that speaks the files and batches endpoints."""

import json
import multiprocessing
import time
from pathlib import Path

import pytest

from avdag.core.common.atomic import write_json_atomic
from avdag.core.judging.batch_api import BatchApiPending, BatchApiTracker, OpenAIBatchJudge
from avdag.core.judging.batch_api_ledger import BatchApiLedger, ClaimLost, runs_to_request
from avdag.core.judging.items import JudgeItem
from avdag.core.judging.judges import OpenAIChatJudge
from avdag.core.judging.score_captions import judge_items
from avdag.core.judging.verdict_cache import JudgeCache, judge_cache_key
from avdag_tests.support.ledger_node import a_submission, hold_claim, race_for_claim
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


def _judge(server, db_url, **kwargs):
    return OpenAIBatchJudge(
        model="judge-test",
        api_key="test",
        base_url=server.base_url,
        system_prompt=SYSTEM,
        user_template=TEMPLATE,
        ledger=BatchApiLedger(db_url),
        requested_by={"asset": "baseline_judge_scores", "partition": "b1"},
        max_retries=0,
        **kwargs,
    )


def _pending(judge, items) -> BatchApiPending:
    with pytest.raises(BatchApiPending) as raised:
        judge.judge(items)
    return raised.value


def test_submits_the_live_judges_exact_requests_as_one_batch(server, db_url):
    judge = _judge(server, db_url)
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


def test_a_run_while_the_batch_runs_submits_nothing_and_the_ended_batch_gives_verdicts_in_order(server, db_url):
    judge = _judge(server, db_url)
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


def test_failed_requests_and_an_expired_batch_become_recorded_failures(server, db_url):
    server.reply_fn = lambda body: StubReply(status=500) if "Snowy" in body["messages"][1]["content"] else _reply(body)
    judge = _judge(server, db_url)
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


def test_a_batch_created_but_never_recorded_is_adopted_not_bought_again(server, db_url):
    judge = _judge(server, db_url)
    submission = _pending(judge, ITEMS).submission
    with judge.ledger.db.write() as db:  # as if killed before the record was written: its claim is left, long ago
        db.exec_driver_sql("UPDATE avdag_judge_batches SET state = 'claimed', record = NULL, claimed_at = 0")
    assert judge.ledger.uncollected() == []
    adopted = _pending(judge, ITEMS)  # takes the stale claim over
    assert adopted.submitted_now and adopted.submission.parts[0].batch_id == submission.parts[0].batch_id
    assert len(server.batches) == 1 and len(server.files) == 1


def test_requests_past_the_batch_limit_go_in_several_batches(server, db_url):
    judge = _judge(server, db_url, max_requests_per_batch=3)
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


def test_with_the_cache_a_second_scoring_of_the_same_answers_costs_nothing(server, db_url):
    judge, cache = _judge(server, db_url), JudgeCache(db_url)
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


def test_a_shared_batch_answers_another_assets_subset_and_stays_its_owners(server, db_url):
    """Fine-tuned answers equal to the baseline's are found in the baseline's submission by coverage."""
    judge = _judge(server, db_url)
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


def test_tracker_reports_ended_and_running_submissions_and_one_run_per_partition(server, db_url):
    server.hold_batches = False
    server.complete_after_polls = 2
    judge = _judge(server, db_url)
    _pending(judge, ITEMS[:2])
    tracker = BatchApiTracker(judge.client, judge.ledger)
    ended, running = tracker.poll()
    assert (len(ended), len(running)) == (0, 1) and running[0].parts[0].status == "in_progress"
    ended, running = tracker.poll()
    assert (len(ended), len(running)) == (1, 0) and ended[0].parts[0].status == "completed"
    runs = runs_to_request(ended)
    assert list(runs) == ["b1"] and runs["b1"][0] == ["baseline_judge_scores"]
    assert runs_to_request(tracker.poll()[0]) == runs, "the same ended batches must give the same run key"


def test_runs_racing_to_submit_the_same_requests_buy_one_batch(server, db_url):
    import threading

    judges = [_judge(server, db_url) for _ in range(4)]  # four runs, one ledger
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


def test_a_status_refresh_does_not_undo_a_collection(server, db_url):
    judge = _judge(server, db_url)
    submission = _pending(judge, ITEMS).submission
    stale_copy = judge.ledger.load(submission.request_key)  # what a sensor read before the run collected
    server.finish_batch(submission.parts[0].batch_id)
    judge.judge(ITEMS)  # collects: sets collected_at
    BatchApiTracker(judge.client, judge.ledger).refresh(stale_copy)  # the sensor writes its refresh afterwards
    assert judge.ledger.load(submission.request_key).collected_at is not None
    assert judge.ledger.uncollected() == []


def test_the_same_requests_bought_again_after_collection_keep_both_records(server, db_url):
    judge = _judge(server, db_url)
    first = _pending(judge, ITEMS).submission
    server.finish_batch(first.parts[0].batch_id)
    judge.judge(ITEMS)  # collected; without a cache the same requests are bought again
    second = _pending(judge, ITEMS)
    assert second.submitted_now and second.submission.request_key == first.request_key
    records = judge.ledger.submissions()
    assert [r.parts[0].batch_id for r in records] == [second.submission.parts[0].batch_id, first.parts[0].batch_id]
    assert records[1].collected_at is not None and records[0].collected_at is None, "the trail of what was bought"
    assert judge.ledger.load(first.request_key).parts == second.submission.parts


def test_a_purchase_that_fails_leaves_no_claim_behind(server, db_url, monkeypatch):
    judge = _judge(server, db_url)
    create = judge._create_batch

    def fail_once(*args):
        monkeypatch.setattr(judge, "_create_batch", create)
        raise ConnectionError("upload failed")

    monkeypatch.setattr(judge, "_create_batch", fail_once)
    with pytest.raises(ConnectionError):
        judge.judge(ITEMS)
    with judge.ledger.db.read() as db:
        assert db.exec_driver_sql("SELECT COUNT(*) FROM avdag_judge_batches").scalar() == 0, "the claim was released"
    assert _pending(judge, ITEMS).submitted_now and len(server.batches) == 1


def test_a_claim_taken_over_while_its_run_was_buying_cannot_record(db_url):
    ledger = BatchApiLedger(db_url, claim_stale_after_s=0)
    with ledger.claim("key") as slow:
        with BatchApiLedger(db_url, claim_stale_after_s=0).claim("key") as taker:  # `slow` looks dead
            assert slow.existing is None and taker.existing is None
            taker.record(a_submission("key", "batch_taker"))
        with pytest.raises(ClaimLost, match="taken over"):
            slow.record(a_submission("key", "batch_slow"))
    assert [s.parts[0].batch_id for s in ledger.submissions()] == ["batch_taker"]


def test_old_json_records_are_imported_and_an_uncollected_one_is_still_watched(db_url, tmp_path):
    folder = tmp_path / "judge_batches"
    pending, collected = a_submission("k1", "batch_1"), a_submission("k2", "batch_2")
    collected.collected_at = time.time()
    for submission in (pending, collected):  # as avdag wrote them before AVDAG_DB_URL
        write_json_atomic(folder / f"{submission.request_key}.json", submission.as_dict())
    ledger = BatchApiLedger(db_url)
    assert ledger.import_legacy(tmp_path / "missing") == 0
    assert ledger.import_legacy(folder) == 2 and ledger.import_legacy(folder) == 0
    assert ledger.uncollected() == [pending] and len(ledger.submissions()) == 2


# -- runs on different nodes: processes ------------------------------------------------------------


def test_two_nodes_racing_for_the_same_submission_one_buys_and_the_other_waits_and_reuses_it(db_url):
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    args = (db_url, "key", context.Barrier(2), results)
    workers = [context.Process(target=race_for_claim, args=args) for _ in range(2)]
    for worker in workers:
        worker.start()
    outcomes = sorted(results.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    (bought, batch_bought, _), (reused, batch_reused, waited) = outcomes
    assert (bought, reused) == ("bought", "reused") and batch_reused == batch_bought
    assert waited > 0.3, "the other node waited for the claim instead of buying"
    assert [s.parts[0].batch_id for s in BatchApiLedger(db_url).submissions()] == [batch_bought]


def _claim_held_elsewhere(db_url: str, tmp_path: Path, hold_s: float):
    flag = tmp_path / "claimed"
    holder = multiprocessing.get_context("spawn").Process(target=hold_claim, args=(db_url, "key", str(flag), hold_s))
    holder.start()
    deadline = time.monotonic() + 30
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return holder


def test_the_claim_of_a_node_that_died_while_buying_is_taken_over_once_stale(db_url, tmp_path):
    holder = _claim_held_elsewhere(db_url, tmp_path, hold_s=60)
    holder.kill()
    holder.join()
    ledger = BatchApiLedger(db_url, claim_stale_after_s=1.5, poll_s=0.05)
    started = time.monotonic()
    with ledger.claim("key") as claim:
        assert claim.existing is None and time.monotonic() - started > 0.3, "waited for the claim to go stale"
        claim.record(a_submission("key", "batch_here"))
    assert [s.parts[0].batch_id for s in ledger.uncollected()] == ["batch_here"]
