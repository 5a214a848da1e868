"""Shared set-up for tests that materialize the whole asset graph on a small batch."""

from avdag.definitions import ASSET_CHECKS, build_resources, defs
from avdag.resources.captioner import CaptionerResource
from avdag.resources.storage import LandingZoneResource
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


def small_run_config() -> dict:
    return {"ops": {"clip_splits": {"config": {"eval_fraction": EVAL_FRACTION}}}}
