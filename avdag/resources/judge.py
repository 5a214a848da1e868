"""The LLM judge: the recipe's OpenAI-compatible chat judge, or an offline one with no key."""

from __future__ import annotations

import dagster as dg
import openai
from pydantic import Field

from avdag.core.captioning.prompts import PromptSet
from avdag.core.judging.batch_api import BatchApiTracker, OpenAIBatchJudge
from avdag.core.judging.batch_api_ledger import BatchApiLedger
from avdag.core.judging.judges import DEFAULT_MAX_IN_FLIGHT, OpenAIChatJudge
from avdag.core.judging.offline_judge import OfflineEmbeddingJudge
from avdag.core.judging.verdict_cache import JudgeCache
from avdag.settings import avdag_home


class JudgeResource(dg.ConfigurableResource):
    """Base for judges: build a judge that scores JudgeItems with the prompt set's judge prompts."""

    def build(self, prompts: PromptSet):
        """A judge that answers now (calibration, and scoring unless the judge batches)."""
        raise NotImplementedError

    def build_scorer(self, prompts: PromptSet, requested_by: dict[str, str]):
        """The judge a scoring run uses; `requested_by` names the run's asset and partition."""
        return self.build(prompts)

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
    max_retries: int = Field(default=4, description="Retries after the first attempt (429, 5xx, timeouts).")
    max_in_flight: int = Field(
        default=DEFAULT_MAX_IN_FLIGHT, description="Judge calls in flight at once; lower it for a low rate limit."
    )
    budget_calls: int | None = Field(default=None, description="Most HTTP calls per scoring run; None: no limit.")
    cache_path: str | None = Field(
        default=None, description="SQLite verdict cache; default $AVDAG_HOME/cache/judge.sqlite."
    )
    use_batch_api: bool = Field(
        default=False,
        description="Score through the OpenAI Batch API (half the price): a run submits and ends, and the "
        "batch_api_judge_sensor requests the scoring run again when the batch has ended.",
    )
    batch_dir: str | None = Field(default=None, description="Submission records; default $AVDAG_HOME/judge_batches.")

    def build(self, prompts: PromptSet) -> OpenAIChatJudge:
        return OpenAIChatJudge(
            **self._endpoint(prompts), max_in_flight=self.max_in_flight, budget_calls=self.budget_calls
        )

    def build_scorer(self, prompts: PromptSet, requested_by: dict[str, str]) -> OpenAIChatJudge | OpenAIBatchJudge:
        if not self.use_batch_api:
            return self.build(prompts)
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
        return JudgeCache(self.cache_path or avdag_home() / "cache" / "judge.sqlite")

    def batch_tracker(self) -> BatchApiTracker | None:
        if not self.use_batch_api:
            return None
        client = openai.OpenAI(
            api_key=self.api_key, base_url=self.base_url, timeout=self.timeout_s, max_retries=self.max_retries
        )
        return BatchApiTracker(client, self._ledger())

    def _ledger(self) -> BatchApiLedger:
        return BatchApiLedger(self.batch_dir or avdag_home() / "judge_batches")


class OfflineJudgeResource(JudgeResource):
    """No key, no network: exact match for multiple-choice fields, MiniLM similarity for text.

    No cache: it is deterministic and makes no calls.
    """

    device: str = "cpu"

    def build(self, prompts: PromptSet) -> OfflineEmbeddingJudge:
        return OfflineEmbeddingJudge(device=self.device)
