"""The recipe's judge through OpenAI's Batch API: half the price, answers within the completion window.

A scoring run cannot wait 24 hours, so judging is split over runs:

1. the first run sends every uncached item as a JSONL batch (custom_id = the item's cache key),
   records the submission in the `BatchApiLedger` and raises `BatchApiPending`;
2. a sensor polls the batch with `BatchApiTracker.poll()` and, once it has ended, requests the run
   that was waiting for it;
3. that run asks again for the same items, finds the ended submission covering them and reads
   its output and error files into verdicts, exactly as if they had been judged live.

A run made while the batch is still going submits nothing new, and runs racing to submit the same
requests (on any node) buy one batch: the ledger's claim on the request key lets one run buy while
the others wait for its record. A crash between creating a batch and recording it is healed by
adopting the batch, found by the request key in its metadata, once the dead run's claim is stale.
"""

from __future__ import annotations

import json
import time
from typing import Any

import openai

from avdag.core.judging.batch_api_ledger import BatchApiLedger, BatchApiPart, BatchApiSubmission, submission_key
from avdag.core.judging.items import JudgeItem
from avdag.core.judging.judges import JudgeVerdict, judge_request_body, verdict_from_reply
from avdag.core.judging.verdict_cache import judge_cache_key, judge_cache_scope

BATCH_ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
# OpenAI's limits are 50,000 requests and 200 MB per input file; stay under both.
MAX_REQUESTS_PER_BATCH = 50_000
MAX_BYTES_PER_BATCH = 190 * 1024 * 1024
ADOPT_SCAN_LIMIT = 500  # recent batches searched for an unrecorded submission of ours
_REUSABLE_STATUSES = frozenset({"validating", "in_progress", "finalizing", "completed"})


class BatchApiPending(Exception):
    """The verdicts are in a batch that has not ended; the run that waits for them ends here."""

    def __init__(self, submission: BatchApiSubmission, submitted_now: bool) -> None:
        self.submission = submission
        self.submitted_now = submitted_now
        verb = "submitted" if submitted_now else "still waiting for"
        super().__init__(
            f"{verb} {len(submission.custom_ids)} judge requests in the OpenAI Batch API ({submission.progress()}); "
            f"the judge batch sensor requests the scoring run when the batch ends"
        )


class BatchApiTracker:
    """Polls the batches of uncollected submissions and records what it saw."""

    def __init__(self, client: openai.OpenAI, ledger: BatchApiLedger) -> None:
        self.client = client
        self.ledger = ledger

    def refresh(self, submission: BatchApiSubmission) -> BatchApiSubmission:
        """Each running part's current status and counts, saved to the ledger."""
        seen = {
            part.batch_id: self.client.batches.retrieve(part.batch_id) for part in submission.parts if not part.ended
        }
        if not seen:
            return submission

        def apply(latest: BatchApiSubmission) -> None:
            for part in latest.parts:
                if part.batch_id in seen and not part.ended:
                    _update_part(part, seen[part.batch_id])

        return self.ledger.update(submission.request_key, apply)

    def poll(self) -> tuple[list[BatchApiSubmission], list[BatchApiSubmission]]:
        """(ended, still running) among the submissions no run has collected yet."""
        ended, running = [], []
        for submission in self.ledger.uncollected():
            submission = self.refresh(submission)
            (ended if submission.ended else running).append(submission)
        return ended, running


class OpenAIBatchJudge:
    """Same requests, same verdict parsing and same cache scope as `OpenAIChatJudge`, sent as batches.

    `requested_by` (e.g. {"asset": ..., "partition": ...}) is stored with each submission so the
    sensor knows which run to request when it ends.
    """

    def __init__(
        self,
        *,
        model: str = "gpt-5",
        api_key: str,
        base_url: str | None = None,
        system_prompt: str,
        user_template: str,
        ledger: BatchApiLedger,
        requested_by: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        max_requests_per_batch: int = MAX_REQUESTS_PER_BATCH,
    ) -> None:
        if max_requests_per_batch < 1:
            raise ValueError(f"max_requests_per_batch must be >= 1, got {max_requests_per_batch}")
        self.model = model
        self.system_prompt = system_prompt
        self.user_template = user_template
        self.ledger = ledger
        self.requested_by = dict(requested_by or {})
        self.max_requests_per_batch = max_requests_per_batch
        # Few, cheap calls (upload, create, retrieve): the client's own retries are enough here.
        self.client = openai.OpenAI(api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=max_retries)
        self.tracker = BatchApiTracker(self.client, ledger)
        self.judge_id = f"openai-batch:{model}@{str(self.client.base_url).rstrip('/')}"
        # The live judge's scope: a verdict bought either way answers both.
        self.cache_scope = judge_cache_scope(f"openai:{model}", system_prompt, user_template)

    def judge(self, items: list[JudgeItem]) -> list[JudgeVerdict]:
        """Verdicts in item order from an ended batch; otherwise submit (or keep waiting) and raise."""
        if not items:
            return []
        keys = [judge_cache_key(self.cache_scope, item) for item in items]
        submission = self.ledger.covering(self.cache_scope, keys)
        if submission is None:
            submission, submitted_now = self._submit_once(dict(zip(keys, items)))
            raise BatchApiPending(submission, submitted_now=submitted_now)
        submission = self.tracker.refresh(submission)
        if not submission.ended:
            raise BatchApiPending(submission, submitted_now=False)
        verdicts = self._collect(submission)
        if submission.requested_by == self.requested_by:  # a shared batch stays its owner's to collect
            collected_at = time.time()
            self.ledger.update(submission.request_key, lambda latest: setattr(latest, "collected_at", collected_at))
        return [verdicts[key] for key in keys]

    # -- submitting ---------------------------------------------------------------------------------

    def _submit_once(self, items_by_key: dict[str, JudgeItem]) -> tuple[BatchApiSubmission, bool]:
        """(submission, bought now): two runs asking for the same requests at once buy one batch."""
        custom_ids = sorted(items_by_key)
        request_key = submission_key(self.cache_scope, custom_ids)
        with self.ledger.claim(request_key) as claim:
            if claim.existing is not None:
                return claim.existing, False
            submission = self._submit(items_by_key, custom_ids, request_key)
            claim.record(submission)
            return submission, True

    def _submit(
        self, items_by_key: dict[str, JudgeItem], custom_ids: list[str], request_key: str
    ) -> BatchApiSubmission:
        chunks = self._chunks([self._request_line(key, items_by_key[key]) for key in custom_ids])
        adoptable = self._batches_already_created(request_key)
        parts = []
        for index, chunk in enumerate(chunks):
            batch = adoptable.get(index) or self._create_batch(request_key, index, len(chunks), chunk)
            parts.append(_update_part(BatchApiPart(batch.id, batch.input_file_id, len(chunk), batch.status), batch))
        return BatchApiSubmission(request_key, self.cache_scope, self.requested_by, custom_ids, parts)

    def _request_line(self, custom_id: str, item: JudgeItem) -> bytes:
        body = judge_request_body(self.model, self.system_prompt, self.user_template, item)
        line = {"custom_id": custom_id, "method": "POST", "url": BATCH_ENDPOINT, "body": body}
        return json.dumps(line, ensure_ascii=False).encode() + b"\n"

    def _chunks(self, lines: list[bytes]) -> list[list[bytes]]:
        chunks: list[list[bytes]] = [[]]
        size = 0
        for line in lines:
            if chunks[-1] and (
                len(chunks[-1]) >= self.max_requests_per_batch or size + len(line) > MAX_BYTES_PER_BATCH
            ):
                chunks.append([])
                size = 0
            chunks[-1].append(line)
            size += len(line)
        return chunks

    def _create_batch(self, request_key: str, index: int, parts: int, lines: list[bytes]) -> Any:
        upload = self.client.files.create(
            file=(f"avdag-judge-{request_key[:12]}-{index + 1}.jsonl", b"".join(lines)), purpose="batch"
        )
        return self.client.batches.create(
            input_file_id=upload.id,
            endpoint=BATCH_ENDPOINT,
            completion_window=COMPLETION_WINDOW,
            metadata={
                "avdag_request_key": request_key,
                "avdag_part": str(index),
                "avdag_parts": str(parts),
                **{f"avdag_{name}": str(value)[:500] for name, value in self.requested_by.items()},
            },
        )

    def _batches_already_created(self, request_key: str) -> dict[int, Any]:
        """{part index: batch} of usable batches created for this request key but never recorded."""
        found: dict[int, Any] = {}
        for scanned, batch in enumerate(self.client.batches.list(limit=100)):
            if scanned >= ADOPT_SCAN_LIMIT:
                break
            metadata = batch.metadata or {}
            if metadata.get("avdag_request_key") == request_key and batch.status in _REUSABLE_STATUSES:
                found.setdefault(int(metadata.get("avdag_part", "0")), batch)
        return found

    # -- collecting ---------------------------------------------------------------------------------

    def _collect(self, submission: BatchApiSubmission) -> dict[str, JudgeVerdict]:
        """A verdict for every custom_id: its result line, else an error naming its batch's fate."""
        found: dict[str, JudgeVerdict] = {}
        for part in submission.parts:
            for file_id in (part.output_file_id, part.error_file_id):
                if file_id:
                    found.update(verdicts_from_results(self.client.files.content(file_id).text))
        verdicts, start = {}, 0
        for part in submission.parts:  # parts hold consecutive runs of custom_ids, in order
            fate = f"batch {part.batch_id} {part.status}" + (f": {part.errors}" if part.errors else "")
            for custom_id in submission.custom_ids[start : start + part.requests]:
                verdicts[custom_id] = found.get(custom_id) or JudgeVerdict(
                    score=None, reply="", error=f"no result for this request ({fate})"
                )
            start += part.requests
        return verdicts


def _update_part(part: BatchApiPart, batch: Any) -> BatchApiPart:
    part.status = batch.status
    part.output_file_id = batch.output_file_id
    part.error_file_id = batch.error_file_id
    counts = batch.request_counts
    part.completed, part.failed = (counts.completed, counts.failed) if counts else (0, 0)
    errors = batch.errors.data if batch.errors and batch.errors.data else []
    part.errors = "; ".join(f"line {e.line}: {e.message}" if e.line else str(e.message) for e in errors[:5]) or None
    return part


def verdicts_from_results(text: str) -> dict[str, JudgeVerdict]:
    """{custom_id: verdict} from a batch output or error file (JSONL); unreadable lines are skipped."""
    verdicts = {}
    for line in text.splitlines():
        try:
            result = json.loads(line)
            custom_id = result["custom_id"]
        except (ValueError, TypeError, KeyError):
            continue
        verdicts[custom_id] = _result_verdict(result)
    return verdicts


def _result_verdict(result: dict[str, Any]) -> JudgeVerdict:
    """One result line: a parsed reply, or an error naming the HTTP status or the batch's error code."""
    response = result.get("response") or {}
    error = result.get("error")
    if error:
        return JudgeVerdict(
            score=None,
            reply="",
            error=f"batch request failed: {error.get('code')}: {error.get('message')}",
            attempts=1 if response else 0,
        )
    status = response.get("status_code")
    body = response.get("body")
    if status != 200:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else body
        return JudgeVerdict(
            score=None, reply="", error=f"HTTP {status} in batch after 1 attempt: {message}", attempts=1
        )
    try:
        reply = body["choices"][0]["message"]["content"] or ""
        usage = body.get("usage") or {}
    except (TypeError, KeyError, IndexError, AttributeError):
        return JudgeVerdict(score=None, reply="", error=f"malformed reply in batch: {str(body)[:200]}", attempts=1)
    return verdict_from_reply(
        reply,
        attempts=1,
        prompt_tokens=usage.get("prompt_tokens", 0),
        completion_tokens=usage.get("completion_tokens", 0),
    )
