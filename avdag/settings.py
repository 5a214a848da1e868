"""Every `AVDAG_*` and `OPENAI_*` variable, read in this one module into a typed, frozen object.

`Settings.from_env()` is the only reader of those variables: `definitions.py` turns the object into
resources once, the CLI reads its own few fields from it. Defaults are stated here (or, for model
and trainer knobs, on the resource the value is handed to, so a resource built in code has them
too). A malformed value fails with the variable's name, its value and what was expected.

Secrets never enter this object: it records only whether a key is set; resources get the key
itself through `dg.EnvVar`, so it never appears in run config or the UI.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

DEFAULT_HOME = ".avdag"
DEFAULT_JUDGE_MODEL = "gpt-5"
DEFAULT_DEMO_CLIPS = 100
DEFAULT_MAX_NEW_TOKENS = 1024
DEFAULT_COSMOS_RL_LAUNCHER = "cosmos-rl"
DEFAULT_CELERY_QUEUE = "dagster"  # dagster-celery's own default: a worker started without -q serves it
EMBEDDED_MODEL = "embedded:tiny-qwen2.5-vl"
# Locally built tiny models, by name -> model family (config.json model_type); the first is the default.
EMBEDDED_MODELS = {EMBEDDED_MODEL: "qwen2_5_vl", "embedded:tiny-qwen3-vl": "qwen3_vl"}

TrainerKind = Literal["embedded", "cosmos-rl"]
ExecutorKind = Literal["in_process", "celery", "k8s"]
VlmTransport = Literal["video", "frames"]
VlmFamily = Literal["qwen2_5_vl", "qwen3_vl"]
_RENAMED = {"AVDAG_CAPTION_BATCH": "AVDAG_CLIPS_PER_GENERATE"}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


class SettingsError(ValueError):
    """An environment variable holds a value avdag cannot use; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """What the environment says, typed. `None` means "not set": the resource's own default applies."""

    home: Path
    state_url: str
    state_is_shared: bool
    db_url: str
    landing_url: str
    s3_endpoint_url: str | None
    model: str
    prompts_dir: str | None
    max_new_tokens: int
    clips_per_generate: int | None
    vlm_base_urls: tuple[str, ...]
    vlm_model: str | None
    vlm_api_key_set: bool
    vlm_transport: VlmTransport
    vlm_family: VlmFamily
    vlm_max_frames: int | None
    trainer: TrainerKind
    sft_steps: int | None
    train_after_new_clips: int | None
    cosmos_rl_launcher: tuple[str, ...]
    cosmos_rl_work_dir: str | None
    openai_api_key_set: bool
    openai_base_url: str | None
    judge_model: str
    judge_batch_api: bool
    judge_requests_per_minute: int | None
    judge_tokens_per_minute: int | None
    judge_repeats: int | None
    demo_clips: int
    executor: ExecutorKind
    celery_broker_url: str | None
    celery_backend_url: str | None
    celery_queue: str

    @property
    def dagster_home(self) -> Path:
        """The Dagster instance the CLI and `make ui` share: `$AVDAG_HOME/dagster`."""
        return self.home / "dagster"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = _Env(os.environ if environ is None else environ)
        for old, new in _RENAMED.items():
            if env.text(old) is not None:
                raise SettingsError(f"{old} was renamed {new}: set {new} instead")
        home = avdag_home(env.text("AVDAG_HOME"))
        return cls(
            home=home,
            state_url=_state_url(env.text("AVDAG_STATE_URL"), home),
            state_is_shared=env.flag("AVDAG_STATE_IS_SHARED"),
            db_url=_db_url(env.text("AVDAG_DB_URL"), home),
            landing_url=env.text("AVDAG_LANDING_URL") or str(home / "landing"),
            s3_endpoint_url=env.text("AVDAG_S3_ENDPOINT_URL"),
            model=env.text("AVDAG_MODEL") or EMBEDDED_MODEL,
            prompts_dir=env.text("AVDAG_PROMPTS_DIR"),
            max_new_tokens=env.positive_int("AVDAG_MAX_NEW_TOKENS") or DEFAULT_MAX_NEW_TOKENS,
            clips_per_generate=env.positive_int("AVDAG_CLIPS_PER_GENERATE"),
            vlm_base_urls=tuple(u.strip() for u in (env.text("AVDAG_VLM_BASE_URLS") or "").split(",") if u.strip()),
            vlm_model=env.text("AVDAG_VLM_MODEL"),
            vlm_api_key_set=bool(env.text("AVDAG_VLM_API_KEY")),
            vlm_transport=env.choice("AVDAG_VLM_TRANSPORT", VlmTransport, default="video"),
            vlm_family=env.choice("AVDAG_VLM_FAMILY", VlmFamily, default="qwen2_5_vl"),
            vlm_max_frames=env.positive_int("AVDAG_VLM_MAX_FRAMES"),
            trainer=env.choice("AVDAG_TRAINER", TrainerKind, default="embedded"),
            sft_steps=env.positive_int("AVDAG_SFT_STEPS"),
            train_after_new_clips=env.positive_int("AVDAG_TRAIN_AFTER_NEW_CLIPS"),
            cosmos_rl_launcher=tuple(shlex.split(env.text("AVDAG_COSMOS_RL_LAUNCHER") or DEFAULT_COSMOS_RL_LAUNCHER)),
            cosmos_rl_work_dir=env.text("AVDAG_COSMOS_RL_WORK_DIR"),
            openai_api_key_set=bool(env.text("OPENAI_API_KEY")),
            openai_base_url=env.text("OPENAI_BASE_URL"),
            judge_model=env.text("AVDAG_JUDGE_MODEL") or DEFAULT_JUDGE_MODEL,
            judge_batch_api=env.flag("AVDAG_JUDGE_BATCH_API"),
            judge_requests_per_minute=env.positive_int("AVDAG_JUDGE_REQUESTS_PER_MINUTE"),
            judge_tokens_per_minute=env.positive_int("AVDAG_JUDGE_TOKENS_PER_MINUTE"),
            judge_repeats=env.positive_int("AVDAG_JUDGE_REPEATS"),
            demo_clips=_default(env.positive_int("AVDAG_DEMO_CLIPS", allow_zero=True), DEFAULT_DEMO_CLIPS),
            executor=env.choice("AVDAG_EXECUTOR", ExecutorKind, default="in_process"),
            celery_broker_url=env.text("AVDAG_CELERY_BROKER_URL"),
            celery_backend_url=env.text("AVDAG_CELERY_BACKEND_URL"),
            celery_queue=env.text("AVDAG_CELERY_QUEUE") or DEFAULT_CELERY_QUEUE,
        )


def avdag_home(value: str | None = None) -> Path:
    """`$AVDAG_HOME` (default `.avdag` in the working directory), absolute.

    Read when a path is needed rather than cached, so one process (a test, the CLI pointing at
    another home) can switch homes; resources ask this, never `os.environ`.
    """
    if value is None:
        value = os.environ.get("AVDAG_HOME") or None
    return Path(value or DEFAULT_HOME).expanduser().resolve()


def _state_url(value: str | None, home: Path) -> str:
    """Where everything that outlives a step lives: a local folder (default: `$AVDAG_HOME`) or `s3://bucket/prefix`."""
    if value is None:
        return str(home)
    if "://" in value and not value.startswith(("s3://", "file://")):
        raise SettingsError(f"AVDAG_STATE_URL={value!r}: expected a local folder, file://... or s3://bucket/prefix")
    if value.startswith("s3://"):
        return value.rstrip("/")
    return str(Path(value.removeprefix("file://")).expanduser().resolve())


def default_db_url(home: Path | None = None) -> str:
    """The database when `AVDAG_DB_URL` is not set: `$AVDAG_HOME/avdag.sqlite`, for one machine."""
    return f"sqlite:///{(home or avdag_home()) / 'avdag.sqlite'}"


def _db_url(value: str | None, home: Path) -> str:
    """The clip registry, judge verdict cache and judge-batch ledger: SQLite under `$AVDAG_HOME` by default."""
    if value is None:
        return default_db_url(home)
    if not value.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise SettingsError(f"AVDAG_DB_URL={value!r}: expected sqlite:///path/to/file.sqlite or postgresql://...")
    return value


def _default(value: int | None, default: int) -> int:
    return default if value is None else value


class _Env:
    """Typed reads of one environment mapping, each error naming the variable."""

    def __init__(self, environ: Mapping[str, str]):
        self._environ = environ

    def text(self, name: str) -> str | None:
        value = self._environ.get(name, "").strip()
        return value or None

    def positive_int(self, name: str, allow_zero: bool = False) -> int | None:
        value = self.text(name)
        if value is None:
            return None
        try:
            number = int(value)
        except ValueError:
            raise SettingsError(f"{name}={value!r}: expected an integer") from None
        if number < 0 or (number == 0 and not allow_zero):
            raise SettingsError(f"{name}={value!r}: expected an integer {'>= 0' if allow_zero else '> 0'}")
        return number

    def flag(self, name: str) -> bool:
        value = (self.text(name) or "").lower()
        if value in _TRUE:
            return True
        if value in _FALSE:
            return False
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(_TRUE + _FALSE[1:])}")

    def choice(self, name: str, kind, default: str) -> str:
        value = self.text(name) or default
        allowed = get_args(kind)
        if value not in allowed:
            raise SettingsError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
        return value
