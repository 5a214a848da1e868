"""The Qwen-VL model families avdag captions and trains with, told apart by `config.json`'s `model_type`.

Cosmos-Reason1 is a Qwen2.5-VL, Cosmos-Reason2 a Qwen3-VL. One code path serves both; what differs is
data, kept in this table: the vision patch (14 vs 16 pixels, so frames are multiples of 28 vs 32), the
pixel budgets derived from it, and whether the processor needs the video's metadata (Qwen3-VL writes a
timestamp before every temporal patch; without the source fps and frame indices it assumes 24 fps).
Anything else is refused before a model is loaded, naming the supported families.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from avdag.core.ingest.video import VIDEO_MIN_TOKENS

# Merged vision tokens per frame the recipe budgets: a 16 x 9 grid (RECIPE_MAX_PIXELS for Qwen2.5-VL).
RECIPE_TOKENS_PER_FRAME = 16 * 9

# avdag_training.json key naming the family a fine-tuned checkpoint was trained from.
BASE_FAMILY_KEY = "base_family"
TRAINING_RECORD = "avdag_training.json"


class UnsupportedModelError(ValueError):
    """A checkpoint whose architecture avdag does not caption or train with, or of the wrong family."""


@dataclass(frozen=True)
class ModelFamily:
    """What avdag needs to know about a family; geometry defaults apply where a processor config is silent."""

    name: str  # the HF model_type, also the family string served captioning and lineage use
    display: str
    patch_size: int
    merge_size: int
    temporal_patch_size: int  # frames per temporal patch: the frame count is rounded to a multiple of it
    needs_video_metadata: bool
    cosmos_rl_model_type: str  # the model_type cosmos-rl's model registry matches on
    reference_models: tuple[str, ...]  # hub ids known to be of this family (no config lookup needed)
    processor_class: str  # the transformers processor class of the family's checkpoints

    @property
    def frame_factor(self) -> int:
        """Frame sides are multiples of this: one merged token covers factor x factor pixels."""
        return self.patch_size * self.merge_size

    @property
    def min_pixels(self) -> int:
        return VIDEO_MIN_TOKENS * self.frame_factor**2

    @property
    def max_pixels(self) -> int:
        """The recipe's per-frame budget (16 x 9 merged tokens) at this family's patch size."""
        return RECIPE_TOKENS_PER_FRAME * self.frame_factor**2


QWEN2_5_VL = ModelFamily(
    name="qwen2_5_vl",
    display="Qwen2.5-VL",
    patch_size=14,
    merge_size=2,
    temporal_patch_size=2,
    needs_video_metadata=False,
    cosmos_rl_model_type="qwen2_5_vl",
    reference_models=("nvidia/Cosmos-Reason1-7B",),
    processor_class="Qwen2_5_VLProcessor",
)
QWEN3_VL = ModelFamily(
    name="qwen3_vl",
    display="Qwen3-VL",
    patch_size=16,
    merge_size=2,
    temporal_patch_size=2,
    needs_video_metadata=True,
    cosmos_rl_model_type="qwen3_vl",
    reference_models=("nvidia/Cosmos-Reason2-8B", "nvidia/Cosmos-Reason2-2B"),
    processor_class="Qwen3VLProcessor",
)
FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (QWEN2_5_VL, QWEN3_VL)}


def supported_families() -> str:
    return ", ".join(f"{f.display} (model_type '{f.name}', e.g. {f.reference_models[0]})" for f in FAMILIES.values())


def family_by_name(name: str) -> ModelFamily:
    """The family for a model_type, or UnsupportedModelError naming the supported ones."""
    try:
        return FAMILIES[name]
    except KeyError:
        raise UnsupportedModelError(
            f"model_type {name!r} is not supported; avdag captions and trains {supported_families()}"
        ) from None


def processor_family(processor) -> ModelFamily:
    """The family a loaded processor belongs to (it decides how frames and their metadata are handed over)."""
    name = type(processor).__name__
    for family in FAMILIES.values():
        if family.processor_class == name:
            return family
    raise UnsupportedModelError(f"processor {name} is not one avdag supports; it supports {supported_families()}")


def known_family(model: str) -> ModelFamily | None:
    """The family of a reference hub id, without looking anything up."""
    return next((f for f in FAMILIES.values() if model in f.reference_models), None)


def read_model_config(model_path: str | Path) -> dict:
    """config.json of a checkpoint folder, or of a hub id (the hub cache, or a download unless offline)."""
    path = Path(model_path)
    if path.is_dir():
        config = path / "config.json"
        if not config.is_file():
            raise UnsupportedModelError(f"{model_path}: no config.json, so not a transformers checkpoint")
        return json.loads(config.read_text())
    from huggingface_hub import hf_hub_download

    return json.loads(Path(hf_hub_download(str(model_path), "config.json")).read_text())


def detect_family(model_path: str | Path) -> ModelFamily:
    """The family of a checkpoint, from its config.json's model_type; raises UnsupportedModelError.

    A fine-tuned checkpoint also names the family it was trained from; a disagreement means its
    weights were exported into the other family's architecture, which would load with re-initialised
    (random) vision weights, so it is refused too.
    """
    if not Path(model_path).is_dir() and known_family(str(model_path)):
        return known_family(str(model_path))
    model_type = read_model_config(model_path).get("model_type")
    family = family_by_name(str(model_type))
    base = recorded_base_family(model_path)
    if base is not None and base != family.name:
        raise UnsupportedModelError(
            f"{model_path}: fine-tuned from a {family_by_name(base).display} base but its config.json says "
            f"{family.display} ({family.name}); refusing to load it as the other family"
        )
    return family


def recorded_base_family(model_path: str | Path) -> str | None:
    """The family a fine-tuned checkpoint's training record names (None for a base model)."""
    record = Path(model_path) / TRAINING_RECORD
    if not record.is_file():
        return None
    return json.loads(record.read_text()).get(BASE_FAMILY_KEY)


def require_family(model_path: str | Path, expected: ModelFamily | None) -> ModelFamily:
    """detect_family, also refusing a checkpoint of another family than `expected` (e.g. the base's)."""
    family = detect_family(model_path)
    if expected is not None and family != expected:
        raise UnsupportedModelError(
            f"{model_path} is a {family.display} ({family.name}) checkpoint, but a {expected.display} "
            f"({expected.name}) one is expected here; a checkpoint is only used with the family it was trained from"
        )
    return family


@dataclass(frozen=True)
class FrameGeometry:
    """How frames are sized and counted for a loaded processor: its own config first, the family's defaults second."""

    patch_size: int
    merge_size: int
    temporal_patch_size: int

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    @classmethod
    def of(cls, family: ModelFamily, processor=None) -> FrameGeometry:
        video = getattr(processor, "video_processor", None)
        return cls(
            patch_size=int(getattr(video, "patch_size", None) or family.patch_size),
            merge_size=int(getattr(video, "merge_size", None) or family.merge_size),
            temporal_patch_size=int(getattr(video, "temporal_patch_size", None) or family.temporal_patch_size),
        )
