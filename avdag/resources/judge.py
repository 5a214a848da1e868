"""The LLM judge: the recipe's OpenAI-compatible chat judge, or an offline one with no key."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from avdag.core.judge_cache import JudgeCache
from avdag.core.judges import DEFAULT_MAX_IN_FLIGHT, OfflineEmbeddingJudge, OpenAIChatJudge
from avdag.core.paths import avdag_home
from avdag.core.prompts import PromptSet


class JudgeResource(dg.ConfigurableResource):
    """Base for judges: build a judge that scores JudgeItems with the prompt set's judge prompts."""

    def build(self, prompts: PromptSet):
        raise NotImplementedError

    def cache(self) -> JudgeCache | None:
        """Where verdicts are kept between runs; None: every run judges every item."""
        return None


class OpenAIJudgeResource(JudgeResource):
    """Any OpenAI-compatible chat endpoint; the key comes from the environment (dg.EnvVar)."""

    api_key: str = Field(description="Set with dg.EnvVar('OPENAI_API_KEY').")
    model: str = Field(default="gpt-5", description="Judge model name.")
    base_url: str | None = Field(default=None, description="Default: OpenAI's API.")
    timeout_s: float = Field(default=120.0, description="Per HTTP call; a timeout is retried.")
    max_retries: int = Field(default=4, description="Retries after the first attempt (429, 5xx, timeouts).")
    max_in_flight: int = Field(default=DEFAULT_MAX_IN_FLIGHT, description="Judge calls in flight at once; lower it for a low rate limit.")
    budget_calls: int | None = Field(default=None, description="Most HTTP calls per scoring run; None: no limit.")
    cache_path: str | None = Field(default=None, description="SQLite verdict cache; default $AVDAG_HOME/cache/judge.sqlite.")

    def build(self, prompts: PromptSet) -> OpenAIChatJudge:
        return OpenAIChatJudge(
            model=self.model,
            api_key=self.api_key,
            base_url=self.base_url,
            system_prompt=prompts.judge_system,
            user_template=prompts.judge_user,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
            max_in_flight=self.max_in_flight,
            budget_calls=self.budget_calls,
        )

    def cache(self) -> JudgeCache:
        """One store for baseline and fine-tuned scoring, so an unchanged answer is judged once."""
        return JudgeCache(self.cache_path or avdag_home() / "cache" / "judge.sqlite")


class OfflineJudgeResource(JudgeResource):
    """No key, no network: exact match for multiple-choice fields, MiniLM similarity for text.

    No cache: it is deterministic and makes no calls.
    """

    device: str = "cpu"

    def build(self, prompts: PromptSet) -> OfflineEmbeddingJudge:
        return OfflineEmbeddingJudge(device=self.device)
