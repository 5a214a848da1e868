"""Supervised fine-tuning behind one interface: the embedded trainer now, cosmos-rl beside it later.

`sft_checkpoint` only calls `train(...)`; which trainer runs is a resource choice, so a GPU
cluster swaps in the cosmos-rl launcher without touching the asset.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import dagster as dg
from pydantic import Field

from avdag.core.captioning.model_family import ModelFamily, detect_family
from avdag.core.training.embedded_loop import SftExample, SftResult, SftSettings, train_sft

_DEFAULTS = SftSettings()


class SftTrainerResource(dg.ConfigurableResource):
    """Base for trainers: turn conversations into a checkpoint folder `from_pretrained` loads."""

    def settings(self) -> SftSettings:
        raise NotImplementedError

    def settings_for(self, family: ModelFamily):
        """`settings()` with frames budgeted for `family` (16 x 9 merged tokens: 28- or 32-pixel tokens)."""
        return dataclasses.replace(self.settings(), max_pixels=family.max_pixels)

    def check_base_model(self, base_model: str) -> ModelFamily:
        """The base model's family; UnsupportedModelError (naming the supported families) before any training
        set-up when its model_type is not one avdag trains, or a fine-tune disagrees with its own record."""
        return detect_family(base_model)

    def train(
        self, base_model: str, examples: list[SftExample], output_dir: Path, progress: Callable[[dict], None]
    ) -> SftResult:
        raise NotImplementedError


class EmbeddedTrainerResource(SftTrainerResource):
    """Plain PyTorch/transformers SFT in the Dagster step: for small models and CPU demos."""

    steps: int = Field(default=_DEFAULTS.steps, description="Optimizer steps.")
    batch_size: int = Field(default=_DEFAULTS.batch_size, description="Examples per step (gradient accumulation).")
    learning_rate: float = Field(
        default=_DEFAULTS.learning_rate, description="The default suits the tiny model; the recipe uses 2e-6 for 7B."
    )
    warmup_steps: int = _DEFAULTS.warmup_steps
    seed: int = _DEFAULTS.seed
    device: str = "auto"
    lora_rank: int = Field(
        default=_DEFAULTS.lora_rank,
        description="0 trains every weight; >0 trains LoRA adapters of this rank on the language model's attention "
        "and MLP projections (not the vision tower), merged into the exported checkpoint.",
    )
    lora_alpha: int = Field(
        default=_DEFAULTS.lora_alpha,
        description="LoRA scaling numerator: adapters are scaled by lora_alpha / lora_rank.",
    )
    lora_dropout: float = Field(default=_DEFAULTS.lora_dropout, description="Dropout on the LoRA adapters' input.")
    checkpoint_every: int = Field(
        default=50,
        description="Save resumable training state every this many steps (0: never), so a restarted run continues "
        "where it stopped. Not part of the checkpoint's identity: it does not change the trained weights.",
    )

    def settings(self) -> SftSettings:
        return SftSettings(
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            warmup_steps=self.warmup_steps,
            seed=self.seed,
            lora_rank=self.lora_rank,
            lora_alpha=self.lora_alpha,
            lora_dropout=self.lora_dropout,
        )

    def train(self, base_model, examples, output_dir, progress) -> SftResult:
        return train_sft(
            base_model,
            examples,
            output_dir,
            self.settings_for(self.check_base_model(base_model)),
            device=self.device,
            checkpoint_every=self.checkpoint_every,
            progress=progress,
        )
