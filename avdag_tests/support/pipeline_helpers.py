"""Shared set-up for tests that materialize the whole asset graph on a small batch."""

import dagster as dg

from avdag.core.common.state_store import StateStore, storage_options
from avdag.definitions import ASSET_CHECKS, build_resources, defs
from avdag.defs.pipeline.partitions import clip_batches
from avdag.resources.captioner import EMBEDDED_MODEL_KEY, CaptionerResource
from avdag.resources.storage import LandingZoneResource, StateStoreResource
from avdag.resources.trainer import EmbeddedTrainerResource

EVAL_FRACTION = 0.5
ALL_ASSETS = list(defs.assets) + ASSET_CHECKS


def small_resources(landing_url: str, s3_endpoint_url: str | None = None, **overrides) -> dict:
    """The real resources with a small model budget: short captions, a 3-step fine-tune."""
    resources = build_resources()
    resources.update(
        landing_zone=LandingZoneResource(url=landing_url, s3_endpoint_url=s3_endpoint_url),
        captioner=CaptionerResource(max_new_tokens=48),
        trainer=EmbeddedTrainerResource(steps=3, batch_size=1, warmup_steps=1),
    )
    resources.update(overrides)
    return resources


def state_with_tiny_model(url: str, tiny_model_path: str, s3_endpoint_url: str | None = None) -> StateStoreResource:
    """A state store of the test's own, holding the session's tiny model as `avdag demo` publishes it (not rebuilt)."""
    StateStore(url, storage_options(url, s3_endpoint_url)).put_folder(tiny_model_path, EMBEDDED_MODEL_KEY)
    return StateStoreResource(url=url, s3_endpoint_url=s3_endpoint_url)


def small_run_config() -> dict:
    return {"ops": {"clip_splits": {"config": {"eval_fraction": EVAL_FRACTION}}}}


def materialize_batch(
    instance: dg.DagsterInstance, batch: str, resources: dict, run_config: dict | None = None
) -> dg.ExecuteInProcessResult:
    """Every asset and check for one clip batch (a new partition), in process; raises on a failed step."""
    instance.add_dynamic_partitions(clip_batches.name, [batch])
    return dg.materialize(
        ALL_ASSETS,
        partition_key=batch,
        resources=resources,
        instance=instance,
        run_config=run_config or small_run_config(),
        raise_on_error=True,
    )
