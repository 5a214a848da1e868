"""SFT through cosmos-rl on GPU nodes, behind the same trainer interface as the embedded one."""

from __future__ import annotations

from dataclasses import fields

import dagster as dg
from pydantic import Field

from avdag.core.training.cosmos_rl.config import CosmosRlSettings
from avdag.core.training.cosmos_rl.launcher import train_with_cosmos_rl
from avdag.core.training.embedded_loop import SftResult
from avdag.resources.trainer import SftTrainerResource

_DEFAULTS = CosmosRlSettings()


class CosmosRlTrainerResource(SftTrainerResource):
    """Writes the recipe's cosmos-rl job for the train split, runs it, streams its log into the
    Dagster run and installs the exported safetensors as the checkpoint. Defaults are avha_sft.toml's."""

    epochs: int = Field(default=_DEFAULTS.epochs, description="train.epoch.")
    learning_rate: float = Field(default=_DEFAULTS.learning_rate, description="train.optm_lr.")
    warmup_steps: int = Field(default=_DEFAULTS.warmup_steps, description="train.optm_warmup_steps.")
    train_batch_per_replica: int = Field(
        default=_DEFAULTS.train_batch_per_replica,
        description="Examples per optimizer step on each data-parallel rank; lower it on out-of-memory.",
    )
    mini_batch: int = Field(
        default=_DEFAULTS.mini_batch, description="Examples per forward/backward; divides train_batch_per_replica."
    )
    model_max_length: int = Field(
        default=_DEFAULTS.model_max_length,
        description="Token limit per example (video tokens included); longer train clips fail the run before launch.",
    )
    tp_size: int = Field(default=_DEFAULTS.tp_size, description="Tensor-parallel size.")
    dp_shard_size: int = Field(
        default=_DEFAULTS.dp_shard_size, description="FSDP shard size (GPUs per replica with tp 1)."
    )
    dp_replicate_size: int = Field(
        default=_DEFAULTS.dp_replicate_size, description="Data-parallel replicas of the sharded model."
    )
    save_freq: int = Field(default=_DEFAULTS.save_freq, description="Checkpoint (and export) every this many steps.")
    max_keep: int = Field(default=_DEFAULTS.max_keep, description="Checkpoints kept in the job folder.")
    enable_validation: bool = Field(
        default=_DEFAULTS.enable_validation,
        description="cosmos-rl's own validation; it takes 10% of the train split, so it is off.",
    )
    wandb: bool = Field(default=_DEFAULTS.wandb, description="Also log to Weights & Biases (needs an API key).")
    redis_port: int = Field(
        default=_DEFAULTS.redis_port, description="Port of the redis-server cosmos-rl's controller starts."
    )
    dataloader_num_workers: int = Field(
        default=_DEFAULTS.dataloader_num_workers, description="Video-decoding workers per rank."
    )
    launcher: list[str] = Field(
        default=["cosmos-rl"],
        description="Command that runs cosmos-rl, before '--config job.toml entry.py'; add multi-node flags "
        "(--num-workers, --worker-idx, --url) here.",
    )
    require_redis: bool = Field(default=True, description="Check that redis-server is on PATH before launching.")
    work_dir: str | None = Field(
        default=None,
        description="Where job folders (TOML, JSONL, cosmos-rl checkpoints, log) go; default: beside the checkpoint.",
    )

    def settings(self) -> CosmosRlSettings:
        """Every setting this resource shares with CosmosRlSettings, by name; the rest keep the recipe's values."""
        shared = [f.name for f in fields(CosmosRlSettings) if f.name in type(self).model_fields]
        return CosmosRlSettings(**{name: getattr(self, name) for name in shared})

    def train(self, base_model, examples, output_dir, progress) -> SftResult:
        return train_with_cosmos_rl(
            base_model,
            examples,
            output_dir,
            self.settings_for(self.check_base_model(base_model)),  # frames budgeted for the base model's family
            command=self.launcher,
            progress=progress,
            log=dg.get_dagster_logger().info,
            work_dir=self.work_dir,
            require_redis=self.require_redis,
        )
