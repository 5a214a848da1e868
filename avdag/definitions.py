"""The one Definitions object: settings -> resources -> assets, checks, sensors, schedule, job.

`Settings.from_env()` reads the environment once; the resources are chosen from it here (an
OpenAI key switches the judge, `AVDAG_VLM_BASE_URLS` captioning through servers, `AVDAG_TRAINER`
the trainer, `AVDAG_EXECUTOR` where the steps run, ...). Assets never branch on that; prompts, models
and judge settings become the model-driven assets' code versions.
"""

import dagster as dg

from avdag.defs.captioning import captions
from avdag.defs.captioning.checks import baseline_captions_check, finetuned_captions_check
from avdag.defs.ingest import raw_clips, splits
from avdag.defs.ingest.checks import no_train_eval_leak, quarantine_counts
from avdag.defs.ingest.landing_sensor import landing_zone_sensor
from avdag.defs.judging import judge_calibration, judge_scores
from avdag.defs.judging.batch_api_sensor import batch_api_judge_sensor
from avdag.defs.judging.judge_calibration import judge_separates_answers
from avdag.defs.pipeline.code_versions import code_versions, with_code_versions
from avdag.defs.pipeline.executors import executor_for
from avdag.defs.pipeline.jobs import JOBS
from avdag.defs.pipeline.schedules import nightly_reprocess
from avdag.defs.reporting import clip_catalog, labeling_queue, review, score_comparison
from avdag.defs.reporting.reports_sensor import reports_sensor
from avdag.defs.training import promotion, sft_checkpoint
from avdag.defs.training.promotion import candidate_not_worse
from avdag.defs.training.promotion_sensor import promotion_sensor
from avdag.defs.training.training_sensor import training_sensor
from avdag.resources.captioner import CaptionerResource
from avdag.resources.cosmos_trainer import CosmosRlTrainerResource
from avdag.resources.io_managers import JsonIOManager, ParquetIOManager
from avdag.resources.judge import OfflineJudgeResource, OpenAIJudgeResource
from avdag.resources.registry import ClipRegistryResource
from avdag.resources.remote_captioner import OpenAIVlmCaptionerResource
from avdag.resources.storage import LandingZoneResource, StateStoreResource
from avdag.resources.trainer import EmbeddedTrainerResource
from avdag.resources.training_trigger import TrainingTriggerResource
from avdag.settings import Settings


def _judge(settings: Settings):
    if not settings.openai_api_key_set:
        return OfflineJudgeResource()
    return OpenAIJudgeResource(
        api_key=dg.EnvVar("OPENAI_API_KEY"),
        model=settings.judge_model,
        base_url=settings.openai_base_url,
        use_batch_api=settings.judge_batch_api,
        db_url=settings.db_url,
        requests_per_minute=settings.judge_requests_per_minute,
        tokens_per_minute=settings.judge_tokens_per_minute,
        **({"repeats": settings.judge_repeats} if settings.judge_repeats is not None else {}),
    )


def _captioner(settings: Settings):
    common = dict(
        model=settings.model,
        prompts_dir=settings.prompts_dir,
        max_new_tokens=settings.max_new_tokens,
        clips_per_generate=settings.clips_per_generate,
    )
    if not settings.vlm_base_urls:
        return CaptionerResource(**common)
    return OpenAIVlmCaptionerResource(
        base_urls=list(settings.vlm_base_urls),
        api_key=dg.EnvVar("AVDAG_VLM_API_KEY") if settings.vlm_api_key_set else "EMPTY",
        served_model=settings.vlm_model,
        video_transport=settings.vlm_transport,
        family=settings.vlm_family,
        server_max_frames=settings.vlm_max_frames,
        **common,
    )


def _trainer(settings: Settings):
    if settings.trainer == "cosmos-rl":
        return CosmosRlTrainerResource(launcher=list(settings.cosmos_rl_launcher), work_dir=settings.cosmos_rl_work_dir)
    if settings.sft_steps is not None:
        return EmbeddedTrainerResource(steps=settings.sft_steps)
    return EmbeddedTrainerResource()


def build_resources(settings: Settings | None = None) -> dict:
    """Every resource, chosen from the settings (read from the environment when not given)."""
    settings = settings or Settings.from_env()
    assets = f"{settings.state_url}/assets"  # asset values live in the state store with everything else
    return {
        "landing_zone": LandingZoneResource(url=settings.landing_url, s3_endpoint_url=settings.s3_endpoint_url),
        "state": StateStoreResource(url=settings.state_url, s3_endpoint_url=settings.s3_endpoint_url),
        "clip_registry": ClipRegistryResource(db_url=settings.db_url),
        "captioner": _captioner(settings),
        "trainer": _trainer(settings),
        "judge": _judge(settings),
        "training_trigger": TrainingTriggerResource(min_new_train_clips=settings.train_after_new_clips)
        if settings.train_after_new_clips is not None
        else TrainingTriggerResource(),
        "parquet_io": ParquetIOManager(base_dir=assets, s3_endpoint_url=settings.s3_endpoint_url),
        "json_io": JsonIOManager(base_dir=assets, s3_endpoint_url=settings.s3_endpoint_url),
    }


ASSET_CHECKS = [
    no_train_eval_leak,
    quarantine_counts,
    baseline_captions_check,
    finetuned_captions_check,
    judge_separates_answers,
    candidate_not_worse,
]

_settings = Settings.from_env()
_resources = build_resources(_settings)
defs = dg.Definitions(
    assets=with_code_versions(
        dg.load_assets_from_modules(
            [
                raw_clips,
                splits,
                captions,
                sft_checkpoint,
                promotion,
                judge_scores,
                judge_calibration,
                score_comparison,
                clip_catalog,
                review,
                labeling_queue,
            ]
        ),
        code_versions(_resources),
    ),
    asset_checks=ASSET_CHECKS,
    jobs=JOBS,
    sensors=[landing_zone_sensor, training_sensor, promotion_sensor, reports_sensor, batch_api_judge_sensor],
    schedules=[nightly_reprocess],
    resources=_resources,
    executor=executor_for(_settings),  # fails fast when AVDAG_EXECUTOR cannot work here
)
