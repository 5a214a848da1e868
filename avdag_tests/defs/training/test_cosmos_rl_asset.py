"""sft_checkpoint through the cosmos-rl trainer resource, in Dagster.

cosmos-rl itself needs GPUs, NCCL and redis, so the launcher runs `cosmos_rl_standin.py`: it reads
the generated TOML, builds the dataset through the generated entry script, trains the tiny model and
logs and exports as cosmos-rl does. What is real here is everything avdag does around it, including
refusing a run whose training replica crashed while cosmos-rl still exited 0.
"""

import json
import sys
from pathlib import Path

import dagster as dg
import pytest

from avdag.core.common.database import sqlite_url
from avdag.defs.pipeline.partitions import clip_batches
from avdag.demo.sample_batch import write_sample_batch
from avdag.resources.captioner import CaptionerResource
from avdag.resources.cosmos_trainer import CosmosRlTrainerResource
from avdag.resources.registry import ClipRegistryResource
from avdag_tests.support.cosmos_rl_standin import CRASH_AFTER_STEP
from avdag_tests.support.pipeline_helpers import ALL_ASSETS, small_resources

BATCH = "batch-cosmos"
STANDIN = str(Path(__file__).resolve().parents[2] / "support" / "cosmos_rl_standin.py")


@pytest.fixture(scope="module")
def landing(tmp_path_factory):
    root = tmp_path_factory.mktemp("cosmos_landing")
    write_sample_batch(root, BATCH, n_synthetic=4, seed=11)
    return root


def test_sft_checkpoint_trains_through_the_cosmos_rl_launcher_and_refuses_a_crashed_replica(
    landing, tiny_model_path, tmp_path, monkeypatch
):
    monkeypatch.setenv(
        "AVDAG_HOME", str(tmp_path / "home")
    )  # its own assets and instance: nothing leaks into other tests
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(clip_batches.name, [BATCH])
        trainer = CosmosRlTrainerResource(
            launcher=[sys.executable, STANDIN],
            require_redis=False,
            epochs=1,
            train_batch_per_replica=1,
            mini_batch=1,
            dp_shard_size=1,
            learning_rate=3e-3,
            warmup_steps=1,
            dataloader_num_workers=1,
            save_freq=1,
        )
        resources = small_resources(
            str(landing),
            clip_registry=ClipRegistryResource(db_url=sqlite_url(landing / "_reg.sqlite")),
            trainer=trainer,
            captioner=CaptionerResource(model=tiny_model_path, max_new_tokens=48),
        )
        config = {"ops": {"clip_splits": {"config": {"eval_fraction": 0.2}}}}
        dg.materialize(
            ALL_ASSETS,
            selection=["raw_clips", "clip_quarantine", "clip_splits"],
            partition_key=BATCH,
            resources=resources,
            instance=instance,
            run_config=config,
            raise_on_error=True,
        )
        dg.materialize(ALL_ASSETS, selection=["split_manifest"], resources=resources, instance=instance)

        # cosmos-rl exits 0 when a training replica crashes: its step-1 export must not become the checkpoint.
        monkeypatch.setenv(CRASH_AFTER_STEP, "1")
        crashed = dg.materialize(
            ALL_ASSETS, selection=["sft_checkpoint"], resources=resources, instance=instance, raise_on_error=False
        )
        assert not crashed.success
        (failure,) = [e for e in crashed.all_events if e.is_step_failure]
        error = failure.step_failure_data.error.to_string()
        assert "cosmos-rl exited 0 but training stopped before its final step" in error
        assert "Last step reached: 1/" in error
        assert "refused export " in error and "safetensors/step_1 (step 1)" in error
        assert "torch.OutOfMemoryError: CUDA out of memory" in error and "failed with return code 1" in error
        assert instance.get_latest_materialization_event(dg.AssetKey("sft_checkpoint")) is None
        jobs = list((tmp_path / "home").rglob(".cosmos-rl-jobs/sft-*/outputs/safetensors/step_1"))
        assert len(jobs) == 1, "the crashed run's job folder is kept for cosmos-rl's resume"

        monkeypatch.delenv(CRASH_AFTER_STEP)
        result = dg.materialize(
            ALL_ASSETS, selection=["sft_checkpoint"], resources=resources, instance=instance, raise_on_error=True
        )

        info = result.output_for_node("sft_checkpoint")
        meta = instance.get_latest_materialization_event(dg.AssetKey("sft_checkpoint")).asset_materialization.metadata
        assert meta["trainer"].value == "CosmosRlTrainerResource" and meta["status"].value == "trained"
        assert len(info["losses"]) == len(info["train_clips"]) >= 2  # one epoch, one clip per step
        record = json.loads((Path(info["path"]) / "avdag_training.json").read_text())
        assert record["trainer"] == "cosmos-rl" and record["examples"] == info["train_clips"]
        assert info["weights_hash"].startswith("sha256:") and info["settings"]["epochs"] == 1
        logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
        assert any(line.startswith("[cosmos]") and "Step: 1/" in line for line in logs), (
            "cosmos-rl log not in the run log"
        )
