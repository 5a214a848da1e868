"""The cosmos-rl job: recipe config, TOML, conversations JSONL, entry script and token budget."""

import copy
import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from avdag.core.captioning.conversations import sft_messages
from avdag.core.captioning.model_family import QWEN2_5_VL, QWEN3_VL
from avdag.core.training.cosmos_rl import entry as cosmos_rl_entry_module
from avdag.core.training.cosmos_rl.config import (
    CosmosRlSettings,
    build_cosmos_rl_config,
    check_keys_against_recipe,
    to_toml,
    unknown_keys,
    write_cosmos_rl_toml,
)
from avdag.core.training.cosmos_rl.dataset import overlong_examples, write_conversations_jsonl
from avdag.core.training.embedded_loop import SftExample, encode_example
from avdag.demo.sample_batch import REAL_CLIP_DIR
from avdag_tests.support.sft_examples import synthetic_sft_examples

# The cookbook recipe's config, verbatim below its license header (nvidia-cosmos/cosmos-cookbook,
# scripts/examples/reason1/av_video_caption_vqa/avha_sft.toml; Apache-2.0, (c) 2025 NVIDIA CORPORATION).
RECIPE_AVHA_SFT_TOML = """\
redis = "12800"


[train]
resume = true                          # Enable resuming from checkpoints
epoch = 20                             # Train for 20 epochs
output_dir = "./outputs/avha_sft"      # Output directory
epsilon = 1e-6
optm_name = "AdamW"
optm_lr = 2e-6
optm_impl = "fused"
optm_weight_decay = 0.01
optm_betas = [ 0.9, 0.999,]
optm_warmup_steps = 20
optm_grad_norm_clip = 1.0
async_tp_enabled = false
compile = false
param_dtype = "bfloat16"
fsdp_reduce_dtype = "float32"
fsdp_offload = false
fsdp_reshard_after_forward = "default"
train_batch_per_replica = 16           # Reduced batch size for memory efficiency
sync_weight_interval = 1
enable_validation = true
validation_step = 30
validation_batch_per_replica = 2

[policy]
model_name_or_path = "nvidia/Cosmos-Reason1-7B"
model_max_length = 4096
model_gradient_checkpointing = true

[logging]
logger = ['console', 'wandb']
project_name = "cosmos_reason1_avha"   # Custom project name
experiment_name = "avha_sft"           # Custom experiment name

[train.train_policy]
type = "sft"
enable_dataset_cache = false
dataloader_num_workers = 4
dataloader_prefetch_factor = 4
conversation_column_name = "conversations"
mini_batch = 4

[train.train_policy.dataset]
name = "/path/to/dataset/train"        # Path to local dataset

[train.ckpt]
enable_checkpoint = true
save_freq = 25                         # Save checkpoint every 25 steps
max_keep = 2                           # Keep last 2 checkpoints
save_mode = "async"

[policy.parallelism]
n_init_replicas = 1
tp_size = 1
cp_size = 1
dp_shard_size = 8
pp_size = 1
dp_replicate_size = 1
cp_rotate_method = "allgather"
"""
ENTRY_SCRIPT = Path(cosmos_rl_entry_module.__file__)
REAL_VIDEO = str(REAL_CLIP_DIR / "solidWhiteRight.camera_front_wide_120fov.mp4")
REAL_LABEL = json.loads((REAL_CLIP_DIR / "solidWhiteRight.label.json").read_text())
# Keys cosmos-rl 0.4.x no longer declares (validation moved to [validation]); kept for older versions.
RECIPE_KEYS_COSMOS_RL_0_4_IGNORES = {
    "train.enable_validation",
    "train.validation_step",
    "train.validation_batch_per_replica",
    "policy.parallelism.cp_rotate_method",
}


@pytest.fixture(scope="module")
def recipe() -> dict:
    return tomllib.loads(RECIPE_AVHA_SFT_TOML)


def job_config(settings=CosmosRlSettings(), **paths) -> dict:
    defaults = {
        "model": "/models/base",
        "dataset_path": "/jobs/sft-1/conversations.jsonl",
        "output_dir": "/jobs/sft-1/outputs",
    }
    return build_cosmos_rl_config(settings, **{**defaults, **paths}, run_id="sft-1")


def leaves(table: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in table.items():
        flat.update(leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


def test_default_config_has_every_recipe_key_and_differs_only_where_avdag_must(recipe):
    config = job_config()
    assert check_keys_against_recipe(config, recipe) == []
    ours, theirs = leaves(config), leaves(recipe)
    changed = {key for key in theirs if ours[key] != theirs[key]}
    assert changed == {
        "train.output_dir",
        "train.train_policy.dataset.name",
        "policy.model_name_or_path",
        "logging.logger",  # no wandb unless asked
        "train.enable_validation",  # off: it would take 10% of the train split
    }


def test_check_keys_against_recipe_reports_missing_keys(recipe):
    config = job_config()
    del config["train"]["ckpt"]["max_keep"]
    del config["redis"]
    assert check_keys_against_recipe(config, recipe) == ["redis", "train.ckpt.max_keep"]


def test_every_setting_lands_in_its_recipe_key():
    settings = CosmosRlSettings(
        epochs=3,
        learning_rate=1e-5,
        train_batch_per_replica=12,
        mini_batch=3,
        model_max_length=8192,
        warmup_steps=7,
        weight_decay=0.05,
        grad_norm_clip=0.5,
        tp_size=2,
        dp_shard_size=4,
        dp_replicate_size=2,
        cp_size=1,
        pp_size=1,
        gradient_checkpointing=False,
        save_freq=10,
        max_keep=3,
        enable_validation=True,
        validation_step=11,
        validation_batch_per_replica=5,
        wandb=True,
        redis_port=12900,
        dataloader_num_workers=2,
        fps=4.0,
        max_pixels=1000,
    )
    flat = leaves(job_config(settings))
    expected = {
        "train.epoch": 3,
        "train.optm_lr": 1e-5,
        "train.train_batch_per_replica": 12,
        "train.train_policy.mini_batch": 3,
        "policy.model_max_length": 8192,
        "train.optm_warmup_steps": 7,
        "train.optm_weight_decay": 0.05,
        "train.optm_grad_norm_clip": 0.5,
        "policy.parallelism.tp_size": 2,
        "policy.parallelism.dp_shard_size": 4,
        "policy.parallelism.dp_replicate_size": 2,
        "policy.model_gradient_checkpointing": False,
        "train.ckpt.save_freq": 10,
        "train.ckpt.max_keep": 3,
        "train.enable_validation": True,
        "validation.enable": True,
        "train.validation_step": 11,
        "validation.freq": 11,
        "train.validation_batch_per_replica": 5,
        "validation.batch_size": 5,
        "logging.logger": ["console", "wandb"],
        "redis": "12900",
        "train.train_policy.dataloader_num_workers": 2,
        "custom.fps": 4.0,
        "custom.max_pixels": 1000,
    }
    assert {key: flat[key] for key in expected} == expected


def test_tp_size_timestamp_logger_and_custom_table_are_set():
    config = job_config()
    assert config["policy"]["parallelism"]["tp_size"] == 1  # cosmos-rl's default would be 2
    assert config["train"]["timestamp"] == "sft-1"  # non-empty: output_dir is used as is
    assert config["train"]["output_dir"] == "/jobs/sft-1/outputs"
    assert config["logging"]["logger"] == ["console"]
    assert config["custom"] == {
        "conversations_jsonl": "/jobs/sft-1/conversations.jsonl",
        "fps": 2.0,
        "max_pixels": 16 * 9 * 28 * 28,
        "model_type": "qwen2_5_vl",
        "image_patch_size": 14,
    }


def test_settings_refuse_what_cosmos_rl_would_reject():
    with pytest.raises(ValueError, match="multiple of mini_batch"):
        CosmosRlSettings(train_batch_per_replica=10, mini_batch=4)
    with pytest.raises(ValueError, match="parallelism sizes"):
        CosmosRlSettings(tp_size=0)


def test_total_steps_counts_full_batches_per_data_parallel_rank():
    recipe_settings = CosmosRlSettings()  # 8 ranks x 16 examples per step
    assert recipe_settings.total_steps(100) == 0  # 13 per rank: no full batch
    assert recipe_settings.total_steps(128) == 20
    assert recipe_settings.total_steps(300) == 2 * 20  # 38 per rank -> 2 steps per epoch
    assert recipe_settings.gpus_per_replica == 8


def test_toml_round_trips_through_a_toml_parser(tmp_path):
    config = job_config(output_dir='/jobs/odd "name" \\ é\tx')
    config["custom"]["note"] = "del\x7fete"
    path = tmp_path / "job.toml"
    write_cosmos_rl_toml(config, path)
    assert tomllib.loads(path.read_text()) == config
    assert [p.name for p in tmp_path.iterdir()] == ["job.toml"]
    assert to_toml({"redis": "1", "train": {"epoch": 1}}).startswith('redis = "1"\n')  # root keys before tables


def test_toml_refuses_values_it_cannot_write():
    with pytest.raises(ValueError):
        to_toml({"x": float("nan")})
    with pytest.raises(TypeError):
        to_toml({"x": None})


# --- against the real cosmos-rl config classes (installed with the 'cosmos' extra) ---------------


@pytest.fixture(scope="module")
def cosmos_config_class():
    module = pytest.importorskip(
        "cosmos_rl.policy.config",
        reason="cosmos-rl is not installed: install the 'cosmos' extra to check configs against it",
    )
    return module.Config


def test_written_keys_are_cosmos_rl_fields_except_the_recipes_legacy_ones(cosmos_config_class):
    config = job_config()
    assert set(unknown_keys(config, cosmos_config_class)) == RECIPE_KEYS_COSMOS_RL_0_4_IGNORES
    config["train"]["epochs"] = 3  # a typo cosmos-rl would ignore silently
    assert "train.epochs" in unknown_keys(config, cosmos_config_class)


@pytest.mark.parametrize("family", [QWEN2_5_VL, QWEN3_VL], ids=lambda f: f.name)
def test_cosmos_rl_loads_the_written_toml_as_avdag_meant(cosmos_config_class, tmp_path, family):
    toml = pytest.importorskip("toml", reason="cosmos-rl reads configs with the 'toml' package (cosmos extra)")
    settings = CosmosRlSettings(mini_batch=2, train_batch_per_replica=8, max_pixels=family.max_pixels)
    config = build_cosmos_rl_config(
        settings,
        model="/models/base",
        dataset_path="/jobs/sft-1/conversations.jsonl",
        output_dir="/jobs/sft-1/outputs",
        run_id="sft-1",
        family=family,
    )
    write_cosmos_rl_toml(config, tmp_path / "job.toml")
    loaded = toml.load(tmp_path / "job.toml")  # as cosmos-rl's launcher and controller read it
    assert loaded == config
    parsed = cosmos_config_class.from_dict(copy.deepcopy(loaded))
    assert parsed.train.output_dir == "/jobs/sft-1/outputs"  # no timestamp folder appended
    assert parsed.train.timestamp == "sft-1"
    assert parsed.policy.parallelism.tp_size == 1 and parsed.policy.parallelism.dp_shard_size == 8
    assert parsed.train.train_policy.type == "sft" and parsed.train.train_policy.mini_batch == 2
    assert parsed.train.ckpt.enable_checkpoint and not parsed.train.compile
    assert parsed.logging.logger == ["console"] and not parsed.validation.enable
    assert parsed.custom == config["custom"]


# --- the conversations file and the entry script -------------------------------------------------


@pytest.fixture(scope="module")
def examples(tmp_path_factory) -> list[SftExample]:
    return synthetic_sft_examples(tmp_path_factory.mktemp("clips"), 2, seed=0)


def load_entry_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("avdag_entry_under_test", ENTRY_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_entry_script_dataset_yields_exactly_the_sft_conversations(examples, tmp_path):
    jsonl = tmp_path / "conversations.jsonl"
    write_conversations_jsonl(examples, jsonl)
    config = SimpleNamespace(custom={"conversations_jsonl": str(jsonl), "fps": 2.0, "max_pixels": 16 * 9 * 28 * 28})
    dataset = load_entry_script().get_dataset(config)
    items = [dataset[i] for i in range(len(dataset))]
    assert items == [e.messages for e in examples]
    assert all(isinstance(item[-1]["content"], str) and item[-1]["role"] == "assistant" for item in items)


def test_entry_script_refuses_conversations_sampled_otherwise_than_budgeted(examples, tmp_path):
    jsonl = tmp_path / "conversations.jsonl"
    write_conversations_jsonl(examples, jsonl)
    config = SimpleNamespace(custom={"conversations_jsonl": str(jsonl), "fps": 4.0, "max_pixels": 16 * 9 * 28 * 28})
    with pytest.raises(ValueError, match=examples[0].clip_id):
        load_entry_script().get_dataset(config)


def test_entry_script_import_has_no_side_effects_and_needs_no_cosmos_rl(tmp_path):
    script = tmp_path / ENTRY_SCRIPT.name
    shutil.copyfile(ENTRY_SCRIPT, script)
    probe = (
        "import importlib.util, sys\n"
        "sys.modules['cosmos_rl'] = None  # any import of cosmos_rl now fails\n"
        f"spec = importlib.util.spec_from_file_location('entry', {str(script)!r})\n"
        "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)\n"
        "print(callable(module.get_dataset))\n"
    )
    done = subprocess.run(
        [sys.executable, "-B", "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert [p.name for p in tmp_path.iterdir()] == [script.name]  # nothing written beside it or in the cwd


def test_conversations_jsonl_refuses_relative_video_paths(examples, tmp_path):
    relative = json.loads(json.dumps(examples[0].messages).replace(examples[0].video_path, "clips/a.mp4"))
    with pytest.raises(ValueError, match="not absolute"):
        write_conversations_jsonl([SftExample("a", "clips/a.mp4", relative)], tmp_path / "c.jsonl")
    assert not (tmp_path / "c.jsonl").exists()


def test_overlong_examples_are_reported_by_clip_id_with_their_token_counts(tiny_model_path, examples):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_path)
    real = SftExample(
        "solidWhiteRight",
        REAL_VIDEO,
        sft_messages("You label clips.", "Label it.", REAL_VIDEO, REAL_LABEL, fps=2.0, max_pixels=16 * 9 * 28 * 28),
    )
    short = examples[0]
    settings = CosmosRlSettings()
    counts = {e.clip_id: encode_example(processor, e, settings)["input_ids"].shape[1] for e in (real, short)}
    assert counts["solidWhiteRight"] > counts[short.clip_id]  # 1152 video tokens vs 144
    limit = CosmosRlSettings(model_max_length=counts[short.clip_id])
    assert overlong_examples([short, real], processor, limit) == [("solidWhiteRight", counts["solidWhiteRight"])]
    assert (
        overlong_examples([short, real], processor, CosmosRlSettings(model_max_length=counts["solidWhiteRight"])) == []
    )


# --- the Qwen3-VL family (Cosmos-Reason2) ---------------------------------------------------------


def test_a_qwen3_vl_job_names_its_family_and_refuses_another_model(tiny_model_path, examples, tmp_path):
    from avdag.resources.captioner import CaptionerResource
    from avdag.resources.storage import StateStoreResource

    qwen3 = CaptionerResource(model="embedded:tiny-qwen3-vl").base_model(StateStoreResource())
    settings = CosmosRlSettings(max_pixels=QWEN3_VL.max_pixels)
    config = build_cosmos_rl_config(
        settings, model=qwen3, dataset_path=tmp_path / "c.jsonl", output_dir=tmp_path / "out", run_id="r"
    )  # the family is read from the model folder
    assert config["custom"] | {"conversations_jsonl": None} == {
        "conversations_jsonl": None,
        "fps": 2.0,
        "max_pixels": 16 * 9 * 32 * 32,
        "model_type": "qwen3_vl",
        "image_patch_size": 16,
    }
    assert tomllib.loads(to_toml(config)) == config
    qwen3_examples = [
        SftExample(
            e.clip_id,
            e.video_path,
            json.loads(json.dumps(e.messages).replace('"max_pixels": 112896', '"max_pixels": 147456')),
        )
        for e in examples
    ]
    write_conversations_jsonl(qwen3_examples, tmp_path / "c.jsonl")
    entry = load_entry_script()
    job = SimpleNamespace(custom=config["custom"], policy=SimpleNamespace(model_name_or_path=qwen3))
    assert len(entry.get_dataset(job)) == len(examples)
    job.policy.model_name_or_path = tiny_model_path  # a Qwen2.5-VL under a job sized for Qwen3-VL
    with pytest.raises(ValueError, match="prepared for 'qwen3_vl'"):
        entry.get_dataset(job)


def test_the_pre_launch_token_count_works_for_qwen3_vl(examples):
    """The check cosmos-rl jobs run before launch encodes with the model's own processor and metadata."""
    from transformers import AutoProcessor

    from avdag.resources.captioner import CaptionerResource
    from avdag.resources.storage import StateStoreResource

    processor = AutoProcessor.from_pretrained(
        CaptionerResource(model="embedded:tiny-qwen3-vl").base_model(StateStoreResource())
    )
    settings = CosmosRlSettings(max_pixels=QWEN3_VL.max_pixels)
    tokens = encode_example(processor, examples[0], settings)["input_ids"].shape[1]
    assert overlong_examples(examples[:1], processor, CosmosRlSettings(max_pixels=QWEN3_VL.max_pixels)) == []
    assert overlong_examples(
        examples[:1], processor, CosmosRlSettings(max_pixels=QWEN3_VL.max_pixels, model_max_length=tokens - 1)
    ) == [(examples[0].clip_id, tokens)]
