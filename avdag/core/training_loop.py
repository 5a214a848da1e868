"""Embedded supervised fine-tuning: the recipe's SFT objective in plain PyTorch/transformers.

Each example is the conversation `conversations.sft_messages` builds (the same one cosmos-rl
would train on); the loss covers only the assistant's tokens. Logits are computed only at
supervised positions: full-vocabulary logits for every prompt and video token are most of the
memory and time on a CPU and contribute nothing to the loss.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from avdag.core.captioning import encode_conversation, load_model_and_processor

IGNORE = -100


@dataclass(frozen=True)
class SftSettings:
    steps: int = 200  # optimizer steps
    batch_size: int = 4  # examples per step, accumulated one at a time (no padding)
    learning_rate: float = 1e-3
    warmup_steps: int = 10
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    seed: int = 0
    fps: float = 2.0
    max_pixels: int = 16 * 9 * 28 * 28

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SftExample:
    clip_id: str
    video_path: str
    messages: list[dict[str, Any]]  # system, user {video, rubric}, assistant (label string)


@dataclass(frozen=True)
class SftResult:
    output_dir: Path
    losses: list[tuple[int, float]]
    seconds: float
    examples: int


Progress = Callable[[dict[str, Any]], None]


def encode_example(processor, example: SftExample, settings: SftSettings) -> dict[str, Any]:
    """Model inputs plus labels that are IGNORE everywhere but the assistant's reply."""
    full = encode_conversation(
        processor, example.messages, example.video_path, fps=settings.fps, max_pixels=settings.max_pixels, add_generation_prompt=False
    )
    prompt_text = processor.apply_chat_template(example.messages[:-1], tokenize=False, add_generation_prompt=True)
    full_text = processor.apply_chat_template(example.messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError(f"{example.clip_id}: chat template does not extend the prompt with the answer")
    answer_ids = processor.tokenizer(full_text[len(prompt_text) :], add_special_tokens=False)["input_ids"]
    ids = full["input_ids"]
    prompt_len = ids.shape[1] - len(answer_ids)
    if ids[0, prompt_len:].tolist() != answer_ids:
        raise ValueError(f"{example.clip_id}: answer tokens do not line up with the full conversation")
    labels = ids.clone()
    labels[:, :prompt_len] = IGNORE
    # Supervise the reply and its <|im_end|>, not the newline the template adds after it.
    labels[:, -1] = IGNORE if processor.tokenizer.decode(ids[0, -1]) == "\n" else labels[:, -1]
    return {**dict(full), "labels": labels}


def supervised_loss(model, batch: dict[str, Any]):
    """Cross-entropy over assistant tokens only, projecting just those positions to the vocabulary."""
    import torch.nn.functional as F

    labels = batch["labels"]
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    hidden = model.model(**inputs, use_cache=False).last_hidden_state
    targets = labels[:, 1:]
    mask = targets != IGNORE
    logits = model.lm_head(hidden[:, :-1][mask])
    return F.cross_entropy(logits.float(), targets[mask])


def train_sft(
    base_model: str,
    examples: list[SftExample],
    output_dir: str | Path,
    settings: SftSettings = SftSettings(),
    *,
    device: str = "auto",
    progress: Progress | None = None,
) -> SftResult:
    """Fine-tune `base_model` on `examples`; write a loadable checkpoint to `output_dir` atomically."""
    import torch

    if not examples:
        raise ValueError("no training examples: the train split is empty")
    output_dir = Path(output_dir)
    random.seed(settings.seed)
    torch.manual_seed(settings.seed)
    model, processor = load_model_and_processor(base_model, device)
    model.train()
    encoded = [_to_device(encode_example(processor, ex, settings), model.device) for ex in examples]
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _warmup_cosine(settings.warmup_steps, settings.steps))
    order = _example_order(len(encoded), settings.steps * settings.batch_size, settings.seed)
    losses: list[tuple[int, float]] = []
    start = time.perf_counter()
    for step in range(1, settings.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for idx in order[(step - 1) * settings.batch_size : step * settings.batch_size]:
            loss = supervised_loss(model, encoded[idx]) / settings.batch_size
            loss.backward()
            total += float(loss.detach())
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        scheduler.step()
        losses.append((step, total))
        if progress:
            elapsed = time.perf_counter() - start
            progress({"step": step, "steps": settings.steps, "loss": total, "elapsed_s": elapsed, "eta_s": elapsed / step * (settings.steps - step)})
    seconds = time.perf_counter() - start
    _save_atomically(model, processor, output_dir, {"settings": settings.as_dict(), "losses": losses, "base_model": base_model, "examples": [e.clip_id for e in examples]})
    return SftResult(output_dir, losses, seconds, len(examples))


def _to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}


def _example_order(n: int, needed: int, seed: int) -> list[int]:
    """Epoch-wise shuffles, concatenated until `needed` examples are drawn."""
    rng = random.Random(seed)
    order: list[int] = []
    while len(order) < needed:
        epoch = list(range(n))
        rng.shuffle(epoch)
        order.extend(epoch)
    return order[:needed]


def _warmup_cosine(warmup: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _save_atomically(model, processor, output_dir: Path, record: dict[str, Any]) -> None:
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".sft-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / "avdag_training.json").write_text(json.dumps(record, indent=2))
        if output_dir.exists():
            shutil.rmtree(output_dir)
        os.replace(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
