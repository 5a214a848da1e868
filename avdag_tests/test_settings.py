"""Settings: one reader of the environment, typed values, errors that name the variable, resources chosen from it."""

from pathlib import Path

import dagster as dg
import pytest

from avdag.definitions import build_resources
from avdag.resources.captioner import CaptionerResource
from avdag.resources.cosmos_trainer import CosmosRlTrainerResource
from avdag.resources.judge import OfflineJudgeResource, OpenAIJudgeResource
from avdag.resources.remote_captioner import OpenAIVlmCaptionerResource
from avdag.resources.trainer import EmbeddedTrainerResource
from avdag.settings import EMBEDDED_MODEL, Settings, SettingsError


def test_defaults_on_an_empty_environment(tmp_path):
    settings = Settings.from_env({"AVDAG_HOME": str(tmp_path)})
    assert settings.home == tmp_path.resolve()
    assert settings.landing_url == str(tmp_path.resolve() / "landing")
    assert settings.dagster_home == tmp_path.resolve() / "dagster"
    assert settings.model == EMBEDDED_MODEL
    assert settings.trainer == "embedded" and settings.sft_steps is None
    assert settings.openai_api_key_set is False and settings.judge_batch_api is False
    assert settings.vlm_base_urls == () and settings.clips_per_generate is None
    assert settings.demo_clips == 100


def test_values_are_typed():
    settings = Settings.from_env(
        {
            "AVDAG_LANDING_URL": "s3://bucket/landing",
            "AVDAG_SFT_STEPS": "60",
            "AVDAG_CLIPS_PER_GENERATE": "4",
            "AVDAG_VLM_BASE_URLS": " http://a:8000/v1 , http://b:8000/v1,",
            "AVDAG_TRAINER": "cosmos-rl",
            "AVDAG_COSMOS_RL_LAUNCHER": "cosmos-rl --num-workers 2",
            "AVDAG_JUDGE_BATCH_API": "yes",
            "AVDAG_DEMO_CLIPS": "0",
        }
    )
    assert settings.landing_url == "s3://bucket/landing"  # never turned into a local Path
    assert settings.sft_steps == 60 and settings.clips_per_generate == 4
    assert settings.vlm_base_urls == ("http://a:8000/v1", "http://b:8000/v1")
    assert settings.cosmos_rl_launcher == ("cosmos-rl", "--num-workers", "2")
    assert settings.judge_batch_api is True
    assert settings.demo_clips == 0


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("AVDAG_SFT_STEPS", "eight hundred", "expected an integer"),
        ("AVDAG_SFT_STEPS", "0", "expected an integer > 0"),
        ("AVDAG_MAX_NEW_TOKENS", "-5", "expected an integer > 0"),
        ("AVDAG_TRAINER", "deepspeed", "expected one of embedded, cosmos-rl"),
        ("AVDAG_JUDGE_BATCH_API", "maybe", "expected one of"),
    ],
)
def test_a_bad_value_names_the_variable(name, value, expected):
    with pytest.raises(SettingsError) as error:
        Settings.from_env({name: value})
    assert name in str(error.value) and repr(value) in str(error.value) and expected in str(error.value)


def test_a_renamed_variable_is_not_silently_ignored():
    with pytest.raises(SettingsError, match="AVDAG_CAPTION_BATCH was renamed AVDAG_CLIPS_PER_GENERATE"):
        Settings.from_env({"AVDAG_CAPTION_BATCH": "8"})


def test_resources_follow_the_settings(tmp_path):
    plain = build_resources(Settings.from_env({"AVDAG_HOME": str(tmp_path)}))
    assert type(plain["captioner"]) is CaptionerResource
    assert isinstance(plain["judge"], OfflineJudgeResource)
    assert type(plain["trainer"]) is EmbeddedTrainerResource
    assert plain["trainer"].steps == EmbeddedTrainerResource().steps  # the one default
    assert plain["landing_zone"].url == str(Path(tmp_path).resolve() / "landing")

    tuned = build_resources(
        Settings.from_env(
            {
                "AVDAG_SFT_STEPS": "7",
                "AVDAG_CLIPS_PER_GENERATE": "3",
                "OPENAI_API_KEY": "sk-test",
                "AVDAG_JUDGE_MODEL": "gpt-5-mini",
                "AVDAG_JUDGE_BATCH_API": "1",
            }
        )
    )
    assert tuned["trainer"].steps == 7
    assert tuned["captioner"].clips_per_generate == 3
    judge = tuned["judge"]
    assert isinstance(judge, OpenAIJudgeResource) and judge.model == "gpt-5-mini" and judge.use_batch_api
    assert isinstance(judge.api_key, dg.EnvVar) or "sk-test" not in repr(judge)  # the key stays an EnvVar

    served = build_resources(
        Settings.from_env(
            {
                "AVDAG_VLM_BASE_URLS": "http://127.0.0.1:9/v1",
                "AVDAG_TRAINER": "cosmos-rl",
                "AVDAG_COSMOS_RL_LAUNCHER": "torchrun-wrapper cosmos-rl",
            }
        )
    )
    assert isinstance(served["captioner"], OpenAIVlmCaptionerResource)
    assert served["captioner"].base_urls == ["http://127.0.0.1:9/v1"]
    assert isinstance(served["trainer"], CosmosRlTrainerResource)
    assert served["trainer"].launcher == ["torchrun-wrapper", "cosmos-rl"]


def test_state_and_database_default_under_the_home_and_accept_object_storage_and_postgres(tmp_path):
    local = Settings.from_env({"AVDAG_HOME": str(tmp_path)})
    assert local.state_url == str(tmp_path) and local.db_url == f"sqlite:///{tmp_path / 'avdag.sqlite'}"
    remote = Settings.from_env({"AVDAG_STATE_URL": "s3://bucket/avdag/", "AVDAG_DB_URL": "postgresql://u@db/avdag"})
    assert remote.state_url == "s3://bucket/avdag" and remote.db_url == "postgresql://u@db/avdag"


@pytest.mark.parametrize(
    ("name", "value"), [("AVDAG_STATE_URL", "gs://bucket/x"), ("AVDAG_DB_URL", "mysql://u@db/avdag")]
)
def test_an_unsupported_state_or_database_url_names_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})
