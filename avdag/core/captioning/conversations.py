"""One conversation builder for captioning, the embedded trainer and the cosmos-rl dataset.

What is trained is exactly what is asked: the same system prompt, the same user turn (video
element with the recipe's fps/max_pixels, then the rubric), and for training the human label
formatted as the recipe does.
"""

from __future__ import annotations

from typing import Any

from avdag.core.common.labels import format_label_as_answer

Message = dict[str, Any]


def caption_messages(system_prompt: str, user_prompt: str, video: str, *, fps: float, max_pixels: int) -> list[Message]:
    """The question the captioner is asked about one clip (qwen-vl-utils message format)."""
    return [
        {"role": "system", "content": system_prompt},
        {
            "role": "user",
            "content": [
                {"type": "video", "video": video, "fps": fps, "max_pixels": max_pixels},
                {"type": "text", "text": user_prompt},
            ],
        },
    ]


def sft_messages(
    system_prompt: str,
    user_prompt: str,
    video: str,
    label: dict[str, Any],
    *,
    fps: float,
    max_pixels: int,
) -> list[Message]:
    """A training example: the captioning question plus the human label as the answer.

    The assistant content is a plain string, as cosmos-rl requires.
    """
    return caption_messages(system_prompt, user_prompt, video, fps=fps, max_pixels=max_pixels) + [
        {"role": "assistant", "content": format_label_as_answer(label)}
    ]
