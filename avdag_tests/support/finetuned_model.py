"""A tiny model briefly fine-tuned to give each of a few clips its own answer, for engine tests.

The embedded tiny model is random: every clip gets the same reply and it runs to the token cap, so
a test comparing batched with one-at-a-time answers could not see two rows swapped or a row
stopped at another row's step. This model is trained on a different short JSON answer per clip
(1, 3 and 4 fields) and learns them well enough that greedy replies differ per clip and end with
<|im_end|> at clearly different steps (measured: 8, 26 and 33 new tokens; the third reply may
differ from its target in a character or two, which the tests do not depend on). It is trained by
the project's own embedded SFT loop (`train_sft`, 80 steps, one thread) on CPU: about 85 s on a
2-CPU machine under a load average of 8, less on an idle one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from avdag.core.captioning.conversations import caption_messages
from avdag.core.training.embedded_loop import SftExample, SftSettings, train_sft
from avdag.demo.synthetic_clips import generate_sample_batch

SYSTEM_PROMPT = "You label clips."
USER_PROMPT = "Label it."
# One answer per clip, each one a whole JSON object: 1, 3 and 4 fields, so replies end many tokens apart.
ANSWERS = (
    {"weather": "clear"},
    {"weather": "heavy rain", "lighting": "night", "road_type": "highway"},
    {"weather": "dense fog", "lighting": "dusk", "road_type": "local", "traffic_light": "red"},
)
# Different durations: different video token counts, so a batch of them needs left padding.
DURATIONS_S = (1.0, 2.0, 3.0)
# The fewest pixels the sampler allows (128 video tokens per 2 frames) keep prompts short and training quick.
FPS, MAX_PIXELS = 2.0, 128 * 28 * 28
SETTINGS = SftSettings(steps=80, batch_size=3, learning_rate=5e-3, warmup_steps=5, fps=FPS, max_pixels=MAX_PIXELS)


@dataclass(frozen=True)
class FinetunedClips:
    model_path: str
    clips: list[str]  # clip i was trained to answer answers[i]
    answers: list[str]
    system_prompt: str = SYSTEM_PROMPT
    user_prompt: str = USER_PROMPT
    fps: float = FPS  # caption with these, as trained
    max_pixels: int = MAX_PIXELS


def finetuned_clip_model(base_model: str, root: Path, progress=None) -> FinetunedClips:
    """Render the clips under `root`, fine-tune `base_model` on their answers, return both."""
    import torch

    clips, answers, examples = [], [], []
    for i, (seconds, answer) in enumerate(zip(DURATIONS_S, ANSWERS)):
        # seed i: batches of different seeds draw different weather and lighting, so the clips look apart
        [clip_id] = generate_sample_batch(root / "clips", f"c{i}", 1, seed=i, duration_s=seconds, fps=5)
        video = str(next((root / "clips" / f"c{i}" / "videos").glob(f"{clip_id}*")))
        text = json.dumps(answer)
        messages = caption_messages(SYSTEM_PROMPT, USER_PROMPT, video, fps=FPS, max_pixels=MAX_PIXELS)
        examples.append(SftExample(f"c{i}", video, [*messages, {"role": "assistant", "content": text}]))
        clips.append(video)
        answers.append(text)
    output = root / "model"
    # One thread: this model's ops are too small to share, and on a busy machine a second OpenMP
    # thread mostly spins waiting for the first (several times the CPU time, no faster).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train_sft(base_model, examples, output, SETTINGS, device="cpu", checkpoint_every=0, progress=progress)
    finally:
        torch.set_num_threads(threads)
    return FinetunedClips(str(output), clips, answers)
