"""The captioning model: the embedded tiny model by default, Cosmos-Reason1-7B (or a Qwen3-VL) one setting away."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import dagster as dg
from pydantic import Field

from avdag.core.captioning.engine import VlmCaptioner
from avdag.core.captioning.model import GenerationSettings
from avdag.core.captioning.model_family import ModelFamily, detect_family, family_by_name, known_family
from avdag.core.captioning.prompts import load_prompt_set
from avdag.demo.tiny_model import build_embedded_model
from avdag.resources.storage import StateStoreResource
from avdag.settings import EMBEDDED_MODEL, EMBEDDED_MODELS

COSMOS_REASON1 = "nvidia/Cosmos-Reason1-7B"
EMBEDDED_MODEL_KEY = "models/tiny-qwen2.5-vl"  # where the embedded model is published in the state store


def embedded_model_key(name: str) -> str:
    """State-store key of an embedded model: models/tiny-qwen2.5-vl, models/tiny-qwen3-vl."""
    return "models/" + name.removeprefix("embedded:")


class CaptionerResource(dg.ConfigurableResource):
    """Which base model answers the rubric, on which device, with which generation settings."""

    model: str = Field(
        default=EMBEDDED_MODEL,
        description=f"{', '.join(repr(m) for m in EMBEDDED_MODELS)} (built locally), '{COSMOS_REASON1}', "
        "a Qwen3-VL such as 'nvidia/Cosmos-Reason2-8B', or a checkpoint folder (Qwen2.5-VL or Qwen3-VL).",
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

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Refuse an unsupported model before any step loads it (the message names the supported families)."""
        self.model_family()

    def model_family(self) -> ModelFamily:
        """The base model's family: by name for embedded and reference models, else from its config.json."""
        if self.model in EMBEDDED_MODELS:
            return family_by_name(EMBEDDED_MODELS[self.model])
        return detect_family(self.model)

    def settings_family(self) -> ModelFamily:
        """The family without network access or errors (code versions are computed at definition load);
        an unknown model gets Qwen2.5-VL's budget here and is refused at set-up if unsupported."""
        if self.model in EMBEDDED_MODELS:
            return family_by_name(EMBEDDED_MODELS[self.model])
        family = known_family(self.model)
        if family is None:
            try:
                family = detect_family(self.model) if Path(self.model).is_dir() else None
            except ValueError:
                family = None
        return family or family_by_name("qwen2_5_vl")

    def prompts(self):
        return load_prompt_set(self.prompts_dir)

    def settings(self) -> GenerationSettings:
        """Generation settings; frames get the family's recipe budget (16 x 9 merged tokens)."""
        return GenerationSettings(
            max_new_tokens=self.max_new_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            repetition_penalty=self.repetition_penalty,
            max_pixels=self.settings_family().max_pixels,
        )

    def base_model(self, state: StateStoreResource) -> str:
        """The base model as captions and checkpoints name it: the configured hub id or folder, or the
        embedded model's folder in the state store, built once and published there on first use."""
        if self.model not in EMBEDDED_MODELS:
            return self.model
        store, key = state.store(), embedded_model_key(self.model)
        build = partial(build_embedded_model, prompts=self.prompts(), family=EMBEDDED_MODELS[self.model])
        store.publish_folder(key, build, state.scratch())
        return store.uri(key)

    def captioner(self, model: str, state: StateStoreResource) -> VlmCaptioner:
        """The engine for `model` (a state-store folder is fetched into scratch first); its captions name `model`.

        `model` must be of the base model's family: a checkpoint fine-tuned from another base is refused.
        """
        return VlmCaptioner(
            state.local_model(model),
            recorded_as=model,
            device=self.device,
            devices=self.devices or None,
            settings=self.settings(),
            clips_per_generate=self.clips_per_generate,
            expected_family=self.model_family(),
        )
