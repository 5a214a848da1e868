"""The captioning model: the embedded tiny model by default, Cosmos-Reason1-7B one setting away."""

from __future__ import annotations

from functools import partial

import dagster as dg
from pydantic import Field

from avdag.core.captioning.engine import VlmCaptioner
from avdag.core.captioning.model import GenerationSettings
from avdag.core.captioning.prompts import load_prompt_set
from avdag.demo.tiny_model import build_embedded_model
from avdag.resources.storage import StateStoreResource
from avdag.settings import EMBEDDED_MODEL

COSMOS_REASON1 = "nvidia/Cosmos-Reason1-7B"
EMBEDDED_MODEL_KEY = "models/tiny-qwen2.5-vl"  # where the embedded model is published in the state store


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

    def base_model(self, state: StateStoreResource) -> str:
        """The base model as captions and checkpoints name it: the configured hub id or folder, or the
        embedded model's folder in the state store, built once and published there on first use."""
        if self.model != EMBEDDED_MODEL:
            return self.model
        store = state.store()
        store.publish_folder(EMBEDDED_MODEL_KEY, partial(build_embedded_model, prompts=self.prompts()), state.scratch())
        return store.uri(EMBEDDED_MODEL_KEY)

    def captioner(self, model: str, state: StateStoreResource) -> VlmCaptioner:
        """The engine for `model` (a state-store folder is fetched into scratch first); its captions name `model`."""
        return VlmCaptioner(
            state.local_model(model),
            recorded_as=model,
            device=self.device,
            devices=self.devices or None,
            settings=self.settings(),
            clips_per_generate=self.clips_per_generate,
        )
