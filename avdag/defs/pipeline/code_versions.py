"""Code versions of the model-driven assets, from what decides their output besides Python code.

For an LLM pipeline the prompts, the model and the judge are code: changing any of them must mark
the assets they feed as stale in the UI ("code version changed"). The versions are computed from
the configured resources, the same objects the runs use, so they cannot disagree with what runs.
"""

from __future__ import annotations

import hashlib
import json
from importlib.metadata import version
from typing import Any

import dagster as dg

from avdag.core.judging.offline_judge import CALIBRATION_VERSION as OFFLINE_CALIBRATION
from avdag.resources.judge import OfflineJudgeResource

CAPTION_ASSETS = ("baseline_captions", "finetuned_captions")
JUDGE_ASSETS = ("baseline_judge_scores", "finetuned_judge_scores")
TRAINING_ASSETS = ("sft_checkpoint",)


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([version("avdag"), *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


def _served_model(captioner) -> dict[str, Any]:
    """What a VLM server adds to a caption's identity (nothing for the local engine)."""
    return {
        k: getattr(captioner, k) for k in ("served_model", "model_revision", "video_transport") if hasattr(captioner, k)
    }


def code_versions(resources: dict[str, Any]) -> dict[str, str]:
    """Asset name → code version for captions, checkpoint and judge scores."""
    captioner, judge, trainer = resources["captioner"], resources["judge"], resources["trainer"]
    prompts = captioner.prompts()
    # The model family decides frame geometry and the prompt's video tokens: a Qwen3-VL is not a Qwen2.5-VL.
    family = captioner.settings_family()
    caption = _digest(
        "caption",
        prompts.caption_hash,
        captioner.model,
        family.name,
        captioner.settings().fingerprint(),
        _served_model(captioner),
    )
    training = _digest(
        "training",
        type(trainer).__name__,
        trainer.settings_for(family).as_dict(),
        prompts.caption_hash,
        captioner.model,
        family.name,
    )
    judging = _digest(
        "judge",
        type(judge).__name__,
        getattr(judge, "model", None),
        getattr(judge, "repeats", 1),
        OFFLINE_CALIBRATION if isinstance(judge, OfflineJudgeResource) else None,
        prompts.judge_hash,
    )
    versions = dict.fromkeys(CAPTION_ASSETS, caption) | dict.fromkeys(TRAINING_ASSETS, training)
    # The promotion evaluation captions and judges: it changes with either.
    evaluation = _digest("evaluation", caption, judging)
    # The calibration and the constant answer in the comparison are judged too.
    return (
        versions
        | dict.fromkeys(JUDGE_ASSETS, judging)
        | {"candidate_evaluation": evaluation, "judge_calibration": judging, "score_comparison": judging}
    )


def with_code_versions(assets, versions: dict[str, str]):
    """The same asset definitions, each model-driven one carrying its computed code version."""

    def tag(spec: dg.AssetSpec) -> dg.AssetSpec:
        name = spec.key.to_user_string()
        return spec.replace_attributes(code_version=versions[name]) if name in versions else spec

    return dg.map_asset_specs(tag, assets)
