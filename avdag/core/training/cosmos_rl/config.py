"""The cosmos-rl job config: the cookbook recipe's avha_sft.toml, filled from avdag settings.

Every key of the recipe is written (same sections, same names) so a job can be diffed against the
recipe. cosmos-rl silently ignores keys it does not know, so `unknown_keys` checks a config
against the installed cosmos-rl's pydantic model: in 0.4.x the recipe's `train.enable_validation`,
`train.validation_step`, `train.validation_batch_per_replica` and
`policy.parallelism.cp_rotate_method` are such keys (validation moved to a `[validation]` table,
which is written too).
"""

from __future__ import annotations

import json
import math
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from avdag.core.captioning.model_family import QWEN2_5_VL, ModelFamily, detect_family
from avdag.core.common.atomic import write_bytes_atomic
from avdag.core.ingest.video import RECIPE_FPS, RECIPE_MAX_PIXELS


@dataclass(frozen=True)
class CosmosRlSettings:
    """The recipe's SFT hyperparameters; defaults are avha_sft.toml's values (part of the checkpoint id)."""

    epochs: int = 20
    learning_rate: float = 2e-6
    train_batch_per_replica: int = 16  # examples per optimizer step on each data-parallel rank
    mini_batch: int = 4  # examples per forward/backward within a step
    model_max_length: int = 4096  # cosmos-rl truncates token ids (not pixels) to this
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_norm_clip: float = 1.0
    tp_size: int = 1  # cosmos-rl's default is 2: always written
    dp_shard_size: int = 8
    dp_replicate_size: int = 1
    cp_size: int = 1
    pp_size: int = 1
    gradient_checkpointing: bool = True
    save_freq: int = 25
    max_keep: int = 2
    # Off: with no validation dataset cosmos-rl carves 10% off the train split, and avdag scores
    # the fine-tuned model on its own val split anyway.
    enable_validation: bool = False
    validation_step: int = 30
    validation_batch_per_replica: int = 2
    wandb: bool = False
    redis_port: int = 12800
    dataloader_num_workers: int = 4
    fps: float = RECIPE_FPS
    max_pixels: int = RECIPE_MAX_PIXELS

    def __post_init__(self) -> None:
        sizes = {k: getattr(self, k) for k in ("tp_size", "dp_shard_size", "dp_replicate_size", "cp_size", "pp_size")}
        if min(sizes.values()) < 1:
            raise ValueError(f"parallelism sizes must be >= 1: {sizes}")
        if self.mini_batch < 1 or self.train_batch_per_replica % self.mini_batch:
            raise ValueError(
                f"train_batch_per_replica ({self.train_batch_per_replica}) "
                f"must be a multiple of mini_batch ({self.mini_batch})"
            )
        if self.dataloader_num_workers < 1:
            raise ValueError("dataloader_num_workers must be >= 1: the recipe's prefetch factor needs worker processes")

    @property
    def gpus_per_replica(self) -> int:
        return self.tp_size * self.dp_shard_size * self.dp_replicate_size * self.cp_size * self.pp_size

    def total_steps(self, n_examples: int) -> int:
        """Optimizer steps cosmos-rl will run: each data-parallel rank gets ceil(n/ranks) examples
        and drops its last incomplete batch, so too few examples train nothing at all."""
        per_rank = math.ceil(n_examples / (self.dp_shard_size * self.dp_replicate_size))
        return per_rank // self.train_batch_per_replica * self.epochs

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_cosmos_rl_config(
    settings: CosmosRlSettings,
    *,
    model: str,
    dataset_path: str | Path,
    output_dir: str | Path,
    run_id: str,
    project_name: str = "cosmos_reason1_avha",
    experiment_name: str = "avha_sft",
    family: ModelFamily | None = None,
) -> dict[str, Any]:
    """The recipe's TOML as a dict, with avdag's model, data, output folder and settings.

    `train.timestamp = run_id`: cosmos-rl appends a fresh `YYYYmmddHHMMSS` folder to
    `train.output_dir` in every process unless it is set, so setting it keeps the export where avdag
    looks and lets `resume = true` pick up a crashed run's checkpoints. `[custom]` is what the entry
    script reads, including the model family (`family`, default: detected from a local `model` folder,
    else Qwen2.5-VL), so the job refuses a model of another family and the data packer reads frames
    with the family's patch size.
    """
    s = settings
    if family is None:
        family = detect_family(model) if Path(model).is_dir() else QWEN2_5_VL
    return {
        "redis": str(s.redis_port),
        "train": {
            "resume": True,
            "epoch": s.epochs,
            "output_dir": str(output_dir),
            "timestamp": run_id,
            "epsilon": 1e-6,
            "optm_name": "AdamW",
            "optm_lr": s.learning_rate,
            "optm_impl": "fused",
            "optm_weight_decay": s.weight_decay,
            "optm_betas": [0.9, 0.999],
            "optm_warmup_steps": s.warmup_steps,
            "optm_grad_norm_clip": s.grad_norm_clip,
            "async_tp_enabled": False,
            "compile": False,
            "param_dtype": "bfloat16",
            "fsdp_reduce_dtype": "float32",
            "fsdp_offload": False,
            "fsdp_reshard_after_forward": "default",
            "train_batch_per_replica": s.train_batch_per_replica,
            "sync_weight_interval": 1,
            "enable_validation": s.enable_validation,
            "validation_step": s.validation_step,
            "validation_batch_per_replica": s.validation_batch_per_replica,
            "train_policy": {
                "type": "sft",
                "enable_dataset_cache": False,
                "dataloader_num_workers": s.dataloader_num_workers,
                "dataloader_prefetch_factor": 4,
                "conversation_column_name": "conversations",
                "mini_batch": s.mini_batch,
                "dataset": {"name": str(dataset_path)},
            },
            "ckpt": {
                "enable_checkpoint": True,  # cosmos-rl exports the final safetensors only with checkpointing on
                "save_freq": s.save_freq,
                "max_keep": s.max_keep,
                "save_mode": "async",
            },
        },
        "policy": {
            "model_name_or_path": model,
            "model_max_length": s.model_max_length,
            "model_gradient_checkpointing": s.gradient_checkpointing,
            "parallelism": {
                "n_init_replicas": 1,
                "tp_size": s.tp_size,
                "cp_size": s.cp_size,
                "dp_shard_size": s.dp_shard_size,
                "pp_size": s.pp_size,
                "dp_replicate_size": s.dp_replicate_size,
                "cp_rotate_method": "allgather",
            },
        },
        "logging": {
            # Step lines are printed only with the console logger; avdag parses them.
            "logger": ["console", "wandb"] if s.wandb else ["console"],
            "project_name": project_name,
            "experiment_name": experiment_name,
        },
        "validation": {
            "enable": s.enable_validation,
            "freq": s.validation_step,
            "batch_size": s.validation_batch_per_replica,
        },
        "custom": {
            "conversations_jsonl": str(dataset_path),
            "fps": s.fps,
            "max_pixels": s.max_pixels,
            "model_type": family.cosmos_rl_model_type,
            "image_patch_size": family.patch_size,
        },
    }


def check_keys_against_recipe(config: dict[str, Any], recipe: dict[str, Any]) -> list[str]:
    """Dotted recipe keys the config lacks."""
    missing = []
    for key, value in recipe.items():
        if key not in config:
            missing.append(key)
        elif isinstance(value, dict):
            missing += [f"{key}.{sub}" for sub in check_keys_against_recipe(config[key], value)]
    return missing


def unknown_keys(config: dict[str, Any], config_class: type) -> list[str]:
    """Dotted config keys the pydantic model `config_class` (cosmos-rl's `Config`) does not declare.

    A union of models (`train.train_policy`: SFT or GRPO) is matched to the member that knows the
    most keys; free-form dict fields (`custom`) are not descended into.
    """
    unknown = []
    for key, value in config.items():
        field = config_class.model_fields.get(key)
        if field is None:
            unknown.append(key)
            continue
        members = _model_types(field.annotation)
        if isinstance(value, dict) and members:
            unknown += [f"{key}.{sub}" for sub in min((unknown_keys(value, m) for m in members), key=len)]
    return unknown


def _model_types(annotation: Any) -> list[type]:
    from pydantic import BaseModel

    candidates = typing.get_args(annotation) or (annotation,)
    return [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]


def write_cosmos_rl_toml(config: dict[str, Any], path: str | Path) -> None:
    """Write the config as TOML atomically (cosmos-rl reads it with the `toml` package)."""
    write_bytes_atomic(path, to_toml(config).encode("utf-8"))


def to_toml(config: dict[str, Any]) -> str:
    """TOML for nested dicts of str/int/float/bool and lists of them (all a cosmos-rl config uses)."""
    lines: list[str] = []
    _emit_table(config, [], lines)
    return "\n".join(lines).lstrip("\n") + "\n"


def _emit_table(table: dict[str, Any], path: list[str], lines: list[str]) -> None:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in table.items() if isinstance(v, dict)}
    if path and (scalars or not tables):
        lines += ["", f"[{'.'.join(_toml_key(p) for p in path)}]"]
    lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in scalars.items()]
    for key, sub in tables.items():
        _emit_table(sub, path + [key], lines)


def _toml_key(key: str) -> str:
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML value must be finite, got {value}")
        return repr(value)
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}: {value!r}")


def _toml_string(text: str) -> str:
    """A TOML basic string: JSON's escapes are TOML's, plus DEL, which TOML also forbids raw."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")
