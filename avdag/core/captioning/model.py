"""What captioning shares with training: generation settings, model loading, turning a conversation into inputs.

The model is loaded with `from_pretrained` from a hub id or a local path, so switching from the
embedded tiny model to `nvidia/Cosmos-Reason1-7B` or a fine-tuned export is one setting.
Frames come from avdag's own sampler (recipe fps and max_pixels, Qwen rounding) and are handed
to the processor with `do_resize=False`, so the processor never re-scales them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from avdag.core.ingest.video import RECIPE_FPS, RECIPE_MAX_PIXELS, sample_frames

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
    max_pixels: int = RECIPE_MAX_PIXELS

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


def resolve_device(device: str = "auto") -> str:
    """'auto' picks CUDA when present, so assets never test for a GPU themselves."""
    import torch

    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model_and_processor(model_path: str, device: str = "auto"):
    """Load any Qwen2.5-VL checkpoint (hub id or directory) in the dtype its device wants."""
    import torch
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    device = resolve_device(device)
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    processor = AutoProcessor.from_pretrained(model_path)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype).to(device)
    return model, processor


def encode_conversation(
    processor, messages, video_path: str | Path, *, fps: float, max_pixels: int, add_generation_prompt: bool
):
    """Chat template + sampled frames -> model inputs (the one place both captioning and SFT tokenize)."""
    sampled = sample_frames(video_path, fps=fps, max_pixels=max_pixels)
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    return processor(
        text=[text],
        videos=[sampled.frames],
        fps=[sampled.sample_fps],
        do_resize=False,
        return_tensors="pt",
    )
