"""Caption one clip with a Qwen2.5-VL-architecture model (Cosmos-Reason1-7B or the tiny one).

The model is loaded with `from_pretrained` from a hub id or a local path, so switching from the
embedded tiny model to `nvidia/Cosmos-Reason1-7B` or a fine-tuned export is one setting.
Frames come from avdag's own sampler (recipe fps and max_pixels, Qwen rounding) and are handed
to the processor with `do_resize=False`, so the processor never re-scales them.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path

from avdag.core.answers import answer_is_complete
from avdag.core.conversations import caption_messages
from avdag.core.model_identity import model_fingerprint
from avdag.core.video import RECIPE_FPS, RECIPE_MAX_PIXELS, sample_frames


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


def encode_conversation(processor, messages, video_path: str | Path, *, fps: float, max_pixels: int, add_generation_prompt: bool):
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


class VlmCaptioner:
    """Answers the rubric for clips, one `generate` per clip."""

    def __init__(self, model_path: str, *, device: str = "auto", settings: GenerationSettings = GenerationSettings()):
        self.model_path = str(model_path)
        self.device = resolve_device(device)
        self.settings = settings

    @cached_property
    def model_hash(self) -> str:
        return model_fingerprint(self.model_path)

    @cached_property
    def _loaded(self):
        return load_model_and_processor(self.model_path, self.device)

    def caption(self, video_path: str | Path, system_prompt: str, user_prompt: str) -> CaptionOutput:
        import torch

        model, processor = self._loaded
        s = self.settings
        messages = caption_messages(system_prompt, user_prompt, str(video_path), fps=s.fps, max_pixels=s.max_pixels)
        start = time.perf_counter()
        inputs = encode_conversation(processor, messages, video_path, fps=s.fps, max_pixels=s.max_pixels, add_generation_prompt=True)
        inputs = inputs.to(model.device)
        prompt_len = inputs["input_ids"].shape[1]
        video_tokens = int((inputs["input_ids"] == model.config.video_token_id).sum())
        kwargs = dict(max_new_tokens=s.max_new_tokens, repetition_penalty=s.repetition_penalty)
        if s.temperature > 0:
            kwargs.update(do_sample=True, temperature=s.temperature, top_p=s.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        if s.stop_at_json_end:
            kwargs["stopping_criteria"] = [_JsonAnswerComplete(processor.tokenizer, prompt_len)]
        with torch.inference_mode():
            out = model.generate(**inputs, **kwargs)
        new_ids = out[0, prompt_len:]
        text = processor.tokenizer.decode(new_ids, skip_special_tokens=True)
        return CaptionOutput(text, prompt_len, video_tokens, int(new_ids.numel()), time.perf_counter() - start)


class _JsonAnswerComplete:
    """Stops generation once the reply holds a whole JSON object (checked every few tokens)."""

    def __init__(self, tokenizer, prompt_len: int, every: int = 8):
        self.tokenizer, self.prompt_len, self.every = tokenizer, prompt_len, every

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        new = input_ids.shape[1] - self.prompt_len
        if new == 0 or new % self.every:
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_len :], skip_special_tokens=True)
        return torch.tensor([answer_is_complete(t) for t in texts], dtype=torch.bool, device=input_ids.device)
