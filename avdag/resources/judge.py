"""The LLM judge: the recipe's OpenAI-compatible chat judge, or an offline one with no key."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import dagster as dg
import openai
from pydantic import Field

from avdag.core.captioning.prompts import PromptSet
from avdag.core.judging.batch_api import BatchApiTracker, OpenAIBatchJudge
from avdag.core.judging.batch_api_ledger import BatchApiLedger
from avdag.core.judging.judges import DEFAULT_MAX_IN_FLIGHT, DEFAULT_MAX_WAIT_S, OpenAIChatJudge
from avdag.core.judging.offline_judge import OfflineEmbeddingJudge
from avdag.core.judging.verdict_cache import JudgeCache
from avdag.resources.legacy_state import import_legacy
from avdag.settings import avdag_home, default_db_url


class JudgeResource(dg.ConfigurableResource):
    """Base for judges: build a judge that scores JudgeItems with the prompt set's judge prompts."""

    def build(self, prompts: PromptSet):
        """A judge that answers now (calibration, and scoring unless the judge batches)."""
        raise NotImplementedError

    def build_scorer(self, prompts: PromptSet, requested_by: dict[str, str]):
        """The judge a scoring run uses; `requested_by` names the run's asset and partition."""
        return self.build(prompts)

    def with_reference_labels(self, scorer, labels: Iterable[Mapping[str, Any]]):
        """`scorer` for answers to these labelled clips: the offline judge ranks an answer among their
        human answers (its reference pool); a judge that reads each item alone comes back unchanged."""
        return scorer

    def cache(self) -> JudgeCache | None:
        """Where verdicts are kept between runs; None: every run judges every item."""
        return None

    def batch_tracker(self) -> BatchApiTracker | None:
        """What polls submitted batches; None for a judge that never batches."""
        return None


class OpenAIJudgeResource(JudgeResource):
    """Any OpenAI-compatible chat endpoint; the key comes from the environment (dg.EnvVar)."""

    api_key: str = Field(description="Set with dg.EnvVar('OPENAI_API_KEY').")
    model: str = Field(default="gpt-5", description="Judge model name.")
    base_url: str | None = Field(default=None, description="Default: OpenAI's API.")
    timeout_s: float = Field(default=120.0, description="Per HTTP call; a timeout is retried.")
    max_retries: int = Field(
        default=4, description="Retries after the first attempt for 5xx, timeouts and lost connections (not 429)."
    )
    max_in_flight: int = Field(
        default=DEFAULT_MAX_IN_FLIGHT,
        description="Most judge calls in flight at once; under a rate limit fewer are sent (halved on a 429).",
    )
    budget_calls: int | None = Field(
        default=None, description="Most HTTP calls per scoring run, 429s and retries included; None: no limit."
    )
    requests_per_minute: int | None = Field(
        default=None,
        description="The key's requests-per-minute limit, paced to; None: learned from the x-ratelimit-* headers.",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        description="The key's tokens-per-minute limit, paced to; None: learned from the x-ratelimit-* headers.",
    )
    max_wait_s: float | None = Field(
        default=DEFAULT_MAX_WAIT_S,
        description="No rate-limit wait ends later than this after a run began; items cut off get an error "
        "verdict saying so (and are asked again next run). None: no bound.",
    )
    repeats: int = Field(
        default=1,
        description="Asks per item; the row's score is the median, with the repeats' spread. Live judge only: "
        "the Batch API judge asks once.",
    )
    db_url: str | None = Field(
        default=None,
        description="Where the verdict cache and the Batch API ledger live: sqlite:///... or postgresql://... "
        "(AVDAG_DB_URL); default $AVDAG_HOME/avdag.sqlite.",
    )
    use_batch_api: bool = Field(
        default=False,
        description="Score through the OpenAI Batch API (half the price): a run submits and ends, and the "
        "batch_api_judge_sensor requests the scoring run again when the batch has ended.",
    )

    def build(self, prompts: PromptSet) -> OpenAIChatJudge:
        return OpenAIChatJudge(
            **self._endpoint(prompts),
            max_in_flight=self.max_in_flight,
            budget_calls=self.budget_calls,
            requests_per_minute=self.requests_per_minute,
            tokens_per_minute=self.tokens_per_minute,
            max_wait_s=self.max_wait_s,
            repeats=self.repeats,
        )

    def build_scorer(self, prompts: PromptSet, requested_by: dict[str, str]) -> OpenAIChatJudge | OpenAIBatchJudge:
        if not self.use_batch_api:
            return self.build(prompts)
        if self.repeats != 1:
            raise ValueError(f"repeats={self.repeats} needs the live judge: the Batch API judge asks each item once")
        return OpenAIBatchJudge(**self._endpoint(prompts), ledger=self._ledger(), requested_by=requested_by)

    def _endpoint(self, prompts: PromptSet) -> dict:
        """What the live and the batch judge share: the model, where it is served and the judge prompts."""
        return dict(
            model=self.model,
            api_key=self.api_key,
            base_url=self.base_url,
            system_prompt=prompts.judge_system,
            user_template=prompts.judge_user,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
        )

    def cache(self) -> JudgeCache:
        """One store for baseline and fine-tuned scoring, so an unchanged answer is judged once."""
        cache = JudgeCache(self.db_url or default_db_url())
        import_legacy(cache.import_legacy, avdag_home() / "cache" / "judge.sqlite", "judge verdicts", cache.db)
        return cache

    def batch_tracker(self) -> BatchApiTracker | None:
        if not self.use_batch_api:
            return None
        client = openai.OpenAI(
            api_key=self.api_key, base_url=self.base_url, timeout=self.timeout_s, max_retries=self.max_retries
        )
        return BatchApiTracker(client, self._ledger())

    def _ledger(self) -> BatchApiLedger:
        ledger = BatchApiLedger(self.db_url or default_db_url())
        import_legacy(ledger.import_legacy, avdag_home() / "judge_batches", "judge batch records", ledger.db)
        return ledger


class OfflineJudgeResource(JudgeResource):
    """No key, no network: exact match for multiple-choice fields, MiniLM and a reference pool for text.

    Calibration v2: free text is ranked against the other human answers of the labels given to
    `with_reference_labels` (see OfflineEmbeddingJudge). No cache: it is deterministic and makes no calls.
    """

    device: str = "cpu"

    def build(self, prompts: PromptSet) -> OfflineEmbeddingJudge:
        """No reference pool yet: free text is scored on similarity alone until `with_reference_labels`."""
        return OfflineEmbeddingJudge(device=self.device)

    def with_reference_labels(self, scorer, labels: Iterable[Mapping[str, Any]]) -> OfflineEmbeddingJudge:
        return scorer.with_reference_labels(labels)
