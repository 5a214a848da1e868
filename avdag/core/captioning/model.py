"""What captioning shares with training: generation settings, model loading, turning a conversation into inputs.

The model is loaded with the Auto classes from a hub id or a local path, so switching from the
embedded tiny model to `nvidia/Cosmos-Reason1-7B` (Qwen2.5-VL), a Cosmos-Reason2 (Qwen3-VL) or a
fine-tuned export is one setting; its family (`model_family`) is checked before any weight is read.
Frames come from avdag's own sampler (recipe fps and max_pixels, the family's patch rounding) and are
handed to the processor with `do_resize=False` (and, for Qwen3-VL, `do_sample_frames=False` plus the
video's metadata), so the processor never re-scales or re-samples them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from avdag.core.captioning.model_family import FrameGeometry, ModelFamily, processor_family, require_family
from avdag.core.ingest.video import RECIPE_FPS, RECIPE_MAX_PIXELS, SampledVideo, sample_frames

# Which model wrote a caption: the base model, or the SFT checkpoint in service.
CaptionSource = Literal["baseline", "finetuned"]


@dataclass(frozen=True)
class GenerationSettings:
    """How text is generated; part of every caption's identity."""

    max_new_tokens: int = 1024
    temperature: float = 0.0  # 0 means greedy; the recipe samples at 0.1 with top_p 0.9
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    stop_at_json_end: bool = True
    fps: float = RECIPE_FPS
    max_pixels: int = RECIPE_MAX_PIXELS  # the Qwen2.5-VL budget; a family's own is `family.max_pixels`

    def fingerprint(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class CaptionOutput:
    """One clip's answer. `error` set means no answer was produced (never cached, retried next run)."""

    raw_text: str
    prompt_tokens: int
    video_tokens: int
    new_tokens: int
    seconds: float
    error: str | None = None
    # Which reply field held the answer when a server sent it ("content", or "reasoning_content" /
    # "reasoning" under a reasoning parser); None for the local engine.
    answer_field: str | None = None


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA when present, so assets never test for a GPU themselves."""
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_and_processor(model_path: str, device: str = "auto", expected_family: ModelFamily | None = None):
    """Load a supported Qwen-VL checkpoint (hub id or directory) in the dtype its device wants.

    The family is checked first (UnsupportedModelError otherwise): a checkpoint transformers would
    load into another architecture comes up with randomly initialised vision weights and only warns.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    require_family(model_path, expected_family)
    device = resolve_device(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    processor = AutoProcessor.from_pretrained(model_path)
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype).to(device)
    return model, processor


def frame_geometry(processor) -> FrameGeometry:
    """Patch, merge and temporal patch sizes from the processor's own config (the family's as fallback)."""
    return FrameGeometry.of(processor_family(processor), processor)


def sample_for(processor, video_path: str | Path, *, fps: float, max_pixels: int) -> SampledVideo:
    """The frames the family's reference reader (qwen-vl-utils fetch_video) gives this processor's model."""
    geometry = frame_geometry(processor)
    return sample_frames(
        video_path, fps=fps, max_pixels=max_pixels, factor=geometry.factor, frame_factor=geometry.temporal_patch_size
    )


def video_kwargs(processor, videos: list[SampledVideo]) -> dict:
    """Processor arguments for already sampled and sized videos, as the family's recipe passes them.

    Qwen2.5-VL takes the sampled fps (temporal position ids); Qwen3-VL takes the source fps and frame
    indices (its prompt carries a timestamp per temporal patch) and must not sample frames again.
    """
    frames = [v.frames for v in videos]
    if processor_family(processor).needs_video_metadata:
        from transformers.video_utils import VideoMetadata

        metadata = [VideoMetadata(**v.metadata()) for v in videos]
        return dict(videos=frames, video_metadata=metadata, do_sample_frames=False, do_resize=False)
    return dict(videos=frames, fps=[v.sample_fps for v in videos], do_resize=False)


def encode_conversation(
    processor, messages, video_path: str | Path, *, fps: float, max_pixels: int, add_generation_prompt: bool
):
    """Chat template + sampled frames -> model inputs (the one place both captioning and SFT tokenize)."""
    sampled = sample_for(processor, video_path, fps=fps, max_pixels=max_pixels)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return processor(text=[text], **video_kwargs(processor, [sampled]), return_tensors="pt")
