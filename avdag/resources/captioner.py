"""The captioning model: the embedded tiny model by default, Cosmos-Reason1-7B one setting away."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from avdag.core.captioning.engine import VlmCaptioner
from avdag.core.captioning.model import GenerationSettings
from avdag.core.captioning.prompts import load_prompt_set
from avdag.core.common.locks import build_once
from avdag.demo.tiny_model import build_embedded_model
from avdag.settings import EMBEDDED_MODEL, avdag_home

COSMOS_REASON1 = "nvidia/Cosmos-Reason1-7B"


class CaptionerResource(dg.ConfigurableResource):
    """Which base model answers the rubric, on which device, with which generation settings."""

    model: str = Field(
        default=EMBEDDED_MODEL,
        description=f"'{EMBEDDED_MODEL}' (built locally), '{COSMOS_REASON1}', or a checkpoint folder.",
    )
    device: str = Field(default="auto", description="'auto' picks cuda when present, else cpu.")
    devices: list[str] = Field(
        default_factory=list,
        description="One model copy per entry (e.g. ['cuda:0', 'cuda:1']) sharing the batch's clips; empty = [device].",
    )
    clips_per_generate: int | None = Field(
        default=None,
        description="Clips per generate call (left-padded); default 8 on a GPU, 1 on a CPU. "
        "Does not change greedy answers.",
    )
    max_new_tokens: int = Field(default=1024, description="Upper bound; generation stops at the end of the JSON.")
    temperature: float = Field(default=0.0, description="0 = greedy. The recipe samples at 0.1.")
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    prompts_dir: str | None = Field(default=None, description="Prompt folder; default the project's prompts/.")

    def prompts(self):
        return load_prompt_set(self.prompts_dir)

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
        )

    def base_model_path(self) -> str:
        """The base model as `from_pretrained` takes it, building the embedded one on first use."""
        if self.model != EMBEDDED_MODEL:
            return self.model
        target = avdag_home() / "models" / "tiny-qwen2.5-vl"
        prompts = self.prompts()
        build_once(target, lambda staging: build_embedded_model(staging, prompts), on_reuse=lambda path: path)
        return str(target)

    def captioner(self, model_path: str) -> VlmCaptioner:
        return VlmCaptioner(
            model_path,
            device=self.device,
            devices=self.devices or None,
            settings=self.settings(),
            clips_per_generate=self.clips_per_generate,
        )
