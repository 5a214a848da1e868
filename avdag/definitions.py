"""The one Definitions object: assets, resources, jobs, sensor, schedule and checks.

Resources are chosen here, once, from the environment: OPENAI_API_KEY switches the judge to
the OpenAI-compatible one (AVDAG_JUDGE_BATCH_API=1 sends it through the Batch API), AVDAG_MODEL
the captioning model, AVDAG_VLM_BASE_URLS captioning through OpenAI-compatible servers,
AVDAG_TRAINER=cosmos-rl training through cosmos-rl, AVDAG_LANDING_URL the landing zone,
AVDAG_PROMPTS_DIR the prompt folder. Assets never branch on that; prompts, models and judge
settings become the model-driven assets' code versions.
"""

import os
import shlex

import dagster as dg

from avdag.defs.captioning import captions
from avdag.defs.ingest import raw_clips, splits
from avdag.defs.judging import judge_scores
from avdag.defs.reporting import clip_catalog, score_comparison
from avdag.defs.training import sft_checkpoint
from avdag.defs.captioning.checks import baseline_captions_check, finetuned_captions_check
from avdag.defs.ingest.checks import no_train_eval_leak, quarantine_counts
from avdag.defs.ingest.landing_sensor import landing_zone_sensor
from avdag.defs.judging.batch_api_sensor import judge_batch_sensor
from avdag.defs.judging.checks import baseline_judge_calibration, finetuned_judge_calibration
from avdag.defs.pipeline.jobs import batch_pipeline_job
from avdag.defs.pipeline.schedules import nightly_reprocess
from avdag.defs.pipeline.code_versions import code_versions, with_code_versions
from avdag.resources.cosmos_trainer import CosmosRlTrainerResource
from avdag.resources.captioner import EMBEDDED_MODEL, CaptionerResource
from avdag.resources.io_managers import JsonIOManager, ParquetIOManager
from avdag.resources.remote_captioner import OpenAIVlmCaptionerResource
from avdag.resources.judge import OfflineJudgeResource, OpenAIJudgeResource
from avdag.resources.registry import ClipRegistryResource
from avdag.resources.storage import ArtifactStoreResource, LandingZoneResource
from avdag.resources.trainer import EmbeddedTrainerResource


def _judge():
    if os.environ.get("OPENAI_API_KEY"):
        return OpenAIJudgeResource(
            api_key=dg.EnvVar("OPENAI_API_KEY"),
            model=os.environ.get("AVDAG_JUDGE_MODEL", "gpt-5"),
            base_url=os.environ.get("OPENAI_BASE_URL"),
            use_batch_api=os.environ.get("AVDAG_JUDGE_BATCH_API", "") in ("1", "true", "yes"),
        )
    return OfflineJudgeResource()


def _captioner():
    settings = dict(
        model=os.environ.get("AVDAG_MODEL", EMBEDDED_MODEL),
        prompts_dir=os.environ.get("AVDAG_PROMPTS_DIR"),
        max_new_tokens=int(os.environ.get("AVDAG_MAX_NEW_TOKENS", "1024")),
        batch_size=int(os.environ["AVDAG_CAPTION_BATCH"]) if os.environ.get("AVDAG_CAPTION_BATCH") else None,
    )
    urls = [u.strip() for u in os.environ.get("AVDAG_VLM_BASE_URLS", "").split(",") if u.strip()]
    if not urls:
        return CaptionerResource(**settings)
    key = dg.EnvVar("AVDAG_VLM_API_KEY") if os.environ.get("AVDAG_VLM_API_KEY") else "EMPTY"
    return OpenAIVlmCaptionerResource(base_urls=urls, api_key=key, served_model=os.environ.get("AVDAG_VLM_MODEL"), **settings)


def _trainer():
    if os.environ.get("AVDAG_TRAINER", "embedded") == "cosmos-rl":
        return CosmosRlTrainerResource(
            launcher=shlex.split(os.environ.get("AVDAG_COSMOS_RL_LAUNCHER", "cosmos-rl")),
            work_dir=os.environ.get("AVDAG_COSMOS_RL_WORK_DIR"),
        )
    return EmbeddedTrainerResource(steps=int(os.environ.get("AVDAG_SFT_STEPS", "800")))


def build_resources() -> dict:
    return {
        "landing_zone": LandingZoneResource(
            url=os.environ.get("AVDAG_LANDING_URL"),
            s3_endpoint_url=os.environ.get("AVDAG_S3_ENDPOINT_URL"),
        ),
        "artifacts": ArtifactStoreResource(),
        "clip_registry": ClipRegistryResource(),
        "captioner": _captioner(),
        "trainer": _trainer(),
        "judge": _judge(),
        "parquet_io": ParquetIOManager(),
        "json_io": JsonIOManager(),
    }


ASSET_CHECKS = [
    no_train_eval_leak, quarantine_counts, baseline_captions_check, finetuned_captions_check,
    baseline_judge_calibration, finetuned_judge_calibration,
]

_resources = build_resources()
defs = dg.Definitions(
    assets=with_code_versions(
        dg.load_assets_from_modules([raw_clips, splits, captions, sft_checkpoint, judge_scores, score_comparison, clip_catalog]),
        code_versions(_resources),
    ),
    asset_checks=ASSET_CHECKS,
    jobs=[batch_pipeline_job],
    sensors=[landing_zone_sensor, judge_batch_sensor],
    schedules=[nightly_reprocess],
    resources=_resources,
)
