"""cosmos-rl dataset entry for avdag's SFT jobs: `cosmos-rl --config job.toml entry.py`.

cosmos-rl runs this file in its controller and in every policy rank, so importing it only defines
things; the data is read when cosmos-rl calls `get_dataset(config)`. It needs only the standard
library and torch (no avdag), so the GPU environment needs cosmos-rl alone. The conversations file
and the video sampling avdag budgeted tokens for come from the TOML's `[custom]` table.
"""

import json
import os

from torch.utils.data import Dataset


class ConversationDataset(Dataset):
    """Items are conversation lists, what cosmos-rl's Qwen2.5-VL packer takes from a user dataset."""

    def __init__(self, conversations):
        self.conversations = conversations

    def __len__(self):
        return len(self.conversations)

    def __getitem__(self, idx):
        return self.conversations[idx]


def get_dataset(config) -> ConversationDataset:
    """Factory cosmos-rl calls with its Config; fails if a video's sampling differs from the job's, or the
    model is of another family than the one avdag sized the frames for (28- vs 32-pixel tokens)."""
    custom = config.custom
    _check_model_type(config, custom.get("model_type"))
    with open(custom["conversations_jsonl"], encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    for record in records:
        for video in _video_items(record["conversations"]):
            if (video["fps"], video["max_pixels"]) != (custom["fps"], custom["max_pixels"]):
                raise ValueError(
                    f"{record['clip_id']}: video sampled at fps={video['fps']}, max_pixels={video['max_pixels']}, "
                    f"but the job was budgeted for fps={custom['fps']}, max_pixels={custom['max_pixels']}"
                )
    return ConversationDataset([record["conversations"] for record in records])


def _check_model_type(config, expected):
    policy = getattr(config, "policy", None)
    model = getattr(policy, "model_name_or_path", None)
    if not expected or not model or not os.path.isfile(os.path.join(model, "config.json")):
        return
    with open(os.path.join(model, "config.json"), encoding="utf-8") as f:
        found = json.load(f).get("model_type")
    if found != expected:
        raise ValueError(f"{model} has model_type {found!r}, but the job was prepared for {expected!r}")


def _video_items(conversation):
    for message in conversation:
        if isinstance(message["content"], list):
            yield from (item for item in message["content"] if item.get("type") == "video")


if __name__ == "__main__":
    from cosmos_rl.launcher.worker_entry import main

    main(dataset=get_dataset)
