"""The LLM judge: the recipe's OpenAI-compatible chat judge, or an offline one with no key."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from avdag.core.judges import OfflineEmbeddingJudge, OpenAIChatJudge
from avdag.core.prompts import PromptSet


class JudgeResource(dg.ConfigurableResource):
    """Base for judges: build a judge that scores JudgeItems with the prompt set's judge prompts."""

    def build(self, prompts: PromptSet):
        raise NotImplementedError


class OpenAIJudgeResource(JudgeResource):
    """Any OpenAI-compatible chat endpoint; the key comes from the environment (dg.EnvVar)."""

    api_key: str = Field(description="Set with dg.EnvVar('OPENAI_API_KEY').")
    model: str = Field(default="gpt-5", description="Judge model name.")
    base_url: str | None = Field(default=None, description="Default: OpenAI's API.")
    timeout_s: float = 120.0
    max_retries: int = 4

    def build(self, prompts: PromptSet) -> OpenAIChatJudge:
        return OpenAIChatJudge(
            model=self.model,
            api_key=self.api_key,
            base_url=self.base_url,
            system_prompt=prompts.judge_system,
            user_template=prompts.judge_user,
            timeout_s=self.timeout_s,
            max_retries=self.max_retries,
        )


class OfflineJudgeResource(JudgeResource):
    """No key, no network: exact match for multiple-choice fields, MiniLM similarity for text."""

    device: str = "cpu"

    def build(self, prompts: PromptSet) -> OfflineEmbeddingJudge:
        return OfflineEmbeddingJudge(device=self.device)
