"""Small SFT examples from labelled synthetic clips, for trainer tests."""

import json
from pathlib import Path

from avdag.core.captioning.conversations import sft_messages
from avdag.core.training.embedded_loop import SftExample
from avdag.demo.synthetic_clips import generate_sample_batch


def synthetic_sft_examples(root: Path, n: int, seed: int) -> list[SftExample]:
    """`n` one-second clips with their labels as conversations (short prompts keep token counts small)."""
    ids = generate_sample_batch(root, "b", n, seed=seed, duration_s=1.0, fps=5)
    examples = []
    for clip_id in ids:
        video = str(root / "b" / "videos" / f"{clip_id}.camera_front_wide_120fov.mp4")
        label = json.loads((root / "b" / "metas" / f"{clip_id}.label.json").read_text())
        messages = sft_messages("You label clips.", "Label it.", video, label, fps=2.0, max_pixels=16 * 9 * 28 * 28)
        examples.append(SftExample(clip_id, video, messages))
    return examples
