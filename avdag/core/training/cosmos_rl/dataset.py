"""The data a cosmos-rl job trains on: the embedded trainer's conversations, as JSONL.

Each line is `{"clip_id": ..., "conversations": [...]}` holding `SftExample.messages` unchanged,
so both trainers see the same system prompt, user turn (video + rubric) and label answer.
"""

from __future__ import annotations

import json
from pathlib import Path

from avdag.core.common.atomic import write_bytes_atomic
from avdag.core.training.embedded_loop import SftExample, encode_example


def write_conversations_jsonl(examples: list[SftExample], path: str | Path) -> None:
    """Write one conversation per line, atomically; refuse what cosmos-rl's packer cannot train.

    Video paths must be absolute: cosmos-rl reads them in other processes and working folders.
    """
    lines = []
    for example in examples:
        _check_trainable(example)
        lines.append(json.dumps({"clip_id": example.clip_id, "conversations": example.messages}, ensure_ascii=False))
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))


def _check_trainable(example: SftExample) -> None:
    last = example.messages[-1]
    if last["role"] != "assistant" or not isinstance(last["content"], str):
        raise ValueError(f"{example.clip_id}: the last message must be the assistant's answer as a string")
    for message in example.messages:
        for item in message["content"] if isinstance(message["content"], list) else []:
            if item.get("type") == "video" and not Path(item["video"]).is_absolute():
                raise ValueError(f"{example.clip_id}: video path {item['video']!r} is not absolute")


def overlong_examples(examples: list[SftExample], processor, settings) -> list[tuple[str, int]]:
    """(clip id, token count) of every example longer than `settings.model_max_length`.

    cosmos-rl truncates token ids to that length but not the video pixels, so such an example
    breaks training; it is counted the way the embedded trainer encodes it (video tokens included).
    `settings` needs `fps`, `max_pixels` and `model_max_length`.
    """
    over = []
    for example in examples:
        tokens = encode_example(processor, example, settings)["input_ids"].shape[1]
        if tokens > settings.model_max_length:
            over.append((example.clip_id, tokens))
    return over
