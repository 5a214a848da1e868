"""Supervised fine-tuning behind one interface: the embedded trainer now, cosmos-rl beside it later.

`sft_checkpoint` only calls `train(...)`; which trainer runs is a resource choice, so a GPU
cluster swaps in the cosmos-rl launcher without touching the asset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import dagster as dg
from pydantic import Field

from avdag.core.training_loop import SftExample, SftResult, SftSettings, train_sft


class SftTrainerResource(dg.ConfigurableResource):
    """Base for trainers: turn conversations into a checkpoint folder `from_pretrained` loads."""

    def settings(self) -> SftSettings:
        raise NotImplementedError

    def train(
        self, base_model: str, examples: list[SftExample], output_dir: Path, progress: Callable[[dict], None]
    ) -> SftResult:
        raise NotImplementedError


class EmbeddedTrainerResource(SftTrainerResource):
    """Plain PyTorch/transformers SFT in the Dagster step: for small models and CPU demos."""

    steps: int = Field(default=800, description="Optimizer steps.")
    batch_size: int = Field(default=2, description="Examples per step (gradient accumulation).")
    learning_rate: float = Field(default=2e-3, description="2e-3 suits the tiny model; the recipe uses 2e-6 for 7B.")
    warmup_steps: int = 10
    seed: int = 0
    device: str = "auto"

    def settings(self) -> SftSettings:
        return SftSettings(
            steps=self.steps,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            warmup_steps=self.warmup_steps,
            seed=self.seed,
        )

    def train(self, base_model, examples, output_dir, progress) -> SftResult:
        return train_sft(base_model, examples, output_dir, self.settings(), device=self.device, progress=progress)
